"""cereal: worldpilot's message schema (log.capnp + custom.capnp) and transports (messaging, visionipc).

`from cereal import log, car, custom` gives the compiled schemas: `log.Event`, `log.ModelDataV2`,
`car.CarState` (opendbc's car.capnp, imported by log.capnp), `custom.GroundTruth`, ...
"""
import os

import capnp

capnp.remove_import_hook()

CEREAL_PATH = os.path.dirname(os.path.abspath(__file__))
LOG_CAPNP = os.path.join(CEREAL_PATH, "log.capnp")


def opendbc_car_dir() -> str:
  """Directory of opendbc's car.capnp (log.capnp imports it as "/car.capnp")."""
  import importlib.util
  spec = importlib.util.find_spec("opendbc")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("cereal needs the opendbc package (its car.capnp): `pip install -e .` (pins pycapnp==2.1.0 as "
                      "opendbc does), or, to keep an installed pycapnp 2.2.x, "
                      "`pip install --no-deps opendbc==0.3.1 pycryptodome` (tested with both)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "car")
  if not os.path.isfile(os.path.join(path, "car.capnp")):
    raise ImportError(f"opendbc at {path} has no car.capnp")
  return path


CAPNP_IMPORTS = [opendbc_car_dir()]


def load_schema(path: str = LOG_CAPNP):
  """Compile a schema file with the import path log.capnp needs."""
  return capnp.load(path, imports=CAPNP_IMPORTS)


log = load_schema(LOG_CAPNP)

# Event members openpilot renamed in 2026 (same ordinal, so the same bytes): old name -> current name.
# A tool that selects messages by name can accept either (an older log's events read under the new name).
RENAMED_EVENT_MEMBERS = {
  "gpsNMEA": "gpsNMEADEPRECATED",
  "liveLocationKalmanLegacyDEPRECATED": "liveLocationKalmanDeprecatedDEPRECATED",
  "uploaderState": "uploaderStateDEPRECATED",
  "navInstruction": "navInstructionDEPRECATED",
  "navRoute": "navRouteDEPRECATED",
  "navThumbnail": "navThumbnailDEPRECATED",
  "gnssMeasurements": "gnssMeasurementsDEPRECATED",
  "userFlag": "userBookmark",
  "gyroscope2": "gyroscope2DEPRECATED",
  "accelerometer2": "accelerometer2DEPRECATED",
  "microphone": "soundPressure",
  "mapRenderState": "mapRenderStateDEPRECATED",
  "temperatureSensor2": "temperatureSensor2DEPRECATED",
}
# driverMonitoringState kept its name but moved: the old struct (@71) is driverMonitoringStateDEPRECATED,
# the new one is @151.
car = load_schema(os.path.join(CAPNP_IMPORTS[0], "car.capnp"))
custom = load_schema(os.path.join(CEREAL_PATH, "custom.capnp"))
