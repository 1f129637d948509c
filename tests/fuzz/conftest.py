"""Fuzz suite settings: a fixed number of examples per target, derandomized (the same inputs on every run, so a
failure reproduces), no example database written into the checkout, no per-example deadline (2 shared cores);
pytest-timeout bounds a hang."""
from hypothesis import HealthCheck, settings

settings.register_profile("fuzz", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile("fuzz")
