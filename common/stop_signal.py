"""How the stack's processes stop: SIGTERM (from the manager) and SIGINT (Ctrl-C) only set a flag that the main loop
checks, so the loop finishes its step and the process cleans up (closes its sockets, flushes its log) instead of
dying in the middle of a write.

  stop = StopFlag()
  while not stop:
    ...
"""
from __future__ import annotations

import signal


class StopFlag:
  """False until one of `signals` arrives (installs their handlers; call from the main thread)."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self.signum: int | None = None
    for s in signals:
      signal.signal(s, self._handle)

  def _handle(self, signum, frame) -> None:
    self.signum = signum

  def __bool__(self) -> bool:
    return self.signum is not None
