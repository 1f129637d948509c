"""Fuzz suite settings: a fixed number of examples per target, derandomized (the same inputs on every run, so a
failure reproduces), no example database written into the checkout, no per-example deadline (2 shared cores);
pytest-timeout bounds a hang. Hypothesis' caches go to the temp directory, not into the checkout."""
import os
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), f"worldpilot-hypothesis-{os.getuid()}"))

settings.register_profile("fuzz", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile("fuzz")
