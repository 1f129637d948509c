"""Test-only daemons for tests/selfdrive/test_manager.py (entry points for `manager --add`)."""
import signal
import sys
import time

from cereal import messaging


def pinger() -> int:
  """Publishes carState at 20 Hz until SIGTERM, then exits 0."""
  stop = False

  def on_term(signum, frame):
    nonlocal stop
    stop = True

  signal.signal(signal.SIGTERM, on_term)
  pm = messaging.PubMaster(["carState"])
  i = 0
  while not stop:
    msg = messaging.new_message("carState")
    msg.carState.vEgo = float(i)
    pm.send("carState", msg)
    i += 1
    time.sleep(0.05)
  return 0


def crasher() -> int:
  """Exits with code 3 after 0.3 s (the manager must report and restart it)."""
  time.sleep(0.3)
  sys.exit(3)


def stubborn() -> int:
  """Ignores SIGTERM (the manager must SIGKILL it after its timeout)."""
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  while True:
    time.sleep(0.1)


def parent_of_stubborn() -> int:
  """Starts a grandchild that ignores SIGTERM and writes its pid to $GRANDCHILD_PID_FILE, then waits for SIGTERM."""
  import os
  import subprocess
  code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.1)"
  child = subprocess.Popen([sys.executable, "-c", code])
  with open(os.environ["GRANDCHILD_PID_FILE"], "w") as f:
    f.write(str(child.pid))
  signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
  while True:
    time.sleep(0.1)
