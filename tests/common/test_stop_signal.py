import os
import signal

from common.stop_signal import StopFlag


def test_stop_flag_turns_true_on_its_signals_only():
  old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
  try:
    stop = StopFlag(signals=(signal.SIGUSR1,))
    assert not stop
    signal.signal(signal.SIGUSR2, lambda *a: None)
    os.kill(os.getpid(), signal.SIGUSR2)           # not one of its signals
    assert not stop and stop.signum is None
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop and stop.signum == signal.SIGUSR1
  finally:
    for s, h in old.items():
      signal.signal(s, h)
