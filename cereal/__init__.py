"""cereal: worldpilot's message schema (log.capnp) and transports (messaging, visionipc).

`from cereal import log` gives the compiled schema: `log.Event`, `log.CarState`, ...
"""
import os

import capnp

capnp.remove_import_hook()

CEREAL_PATH = os.path.dirname(os.path.abspath(__file__))
LOG_CAPNP = os.path.join(CEREAL_PATH, "log.capnp")

log = capnp.load(LOG_CAPNP)
