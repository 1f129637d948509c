"""selfdrive.manager: start a stack (loggerd + test daemons), restart a crashing one, stop on SIGTERM/SIGINT."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cereal import messaging
from selfdrive.loggerd import init_params
from tools.lib.logreader import LogReader

ROOT = Path(__file__).resolve().parents[2]
PROCS = "tests.selfdrive.manager_test_procs"


def start_manager(args, env_extra):
  env = dict(os.environ, **env_extra)
  return subprocess.Popen([sys.executable, "-m", "selfdrive.manager", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # a zombie is not alive either (the manager reaps its children; init reaps orphans)
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_manager_runs_restarts_and_stops_on_sigterm(tmp_path):
  prefix = f"mgr{uuid.uuid4().hex[:8]}"
  sm = messaging.SubMaster(["managerState", "carState"], prefix=prefix)
  mgr = start_manager(["--prefix", prefix, "--only", "loggerd,pinger,crasher", "--restart-backoff", "0.2",
                       "--add", f"pinger={PROCS}:pinger", "--add", f"crasher={PROCS}:crasher"],
                      {"WORLDPILOT_LOG_ROOT": str(tmp_path)})
  try:
    state = {}
    crasher_pids = set()   # openpilot's ProcessState has no restart count: a restart is a new pid
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
      sm.update(100)
      if sm.updated["managerState"]:
        state = {p.name: (p.running, p.pid) for p in sm["managerState"].processes}
        crasher_pids |= {p.pid for p in sm["managerState"].processes if p.name == "crasher" and p.pid}
        if len(crasher_pids) >= 3 and sm.seen["carState"] and state["loggerd"][0]:
          break
    assert set(state) == {"loggerd", "pinger", "crasher"}
    assert state["loggerd"][0] and state["pinger"][0]
    assert len(crasher_pids) >= 3, (state, crasher_pids)   # crashed and was restarted (twice)
    assert sm.alive["carState"]
    pids = [v[1] for v in state.values()]
    time.sleep(1.0)                                   # let loggerd record some carState
    mgr.send_signal(signal.SIGTERM)
    out, _ = mgr.communicate(timeout=20)
  finally:
    if mgr.poll() is None:
      mgr.kill()
  assert mgr.returncode == 0, out
  assert "crasher exited with code 3" in out
  assert "all processes stopped" in out
  assert not any(pid_alive(p) for p in pids)
  # loggerd flushed on SIGTERM: a complete, readable log with the pinger's messages
  segs = list(tmp_path.glob("*--0"))
  assert len(segs) == 1
  events = list(LogReader(segs[0] / "rlog.zst"))
  kinds = [e.which() for e in events]
  assert kinds[0] == "initData" and init_params(events[0].initData)["WorldpilotPrefix"] == prefix.encode()
  assert kinds.count("carState") >= 10 and "managerState" in kinds
  assert not os.path.exists(messaging.prefix_dir(prefix))     # the stack's sockets are cleaned up
  sm.close()


def test_sigint_kills_a_process_that_ignores_sigterm(tmp_path):
  prefix = f"mgr{uuid.uuid4().hex[:8]}"
  sm = messaging.SubMaster(["managerState"], prefix=prefix)
  mgr = start_manager(["--prefix", prefix, "--only", "stubborn", "--sigkill-timeout", "0.5",
                       "--add", f"stubborn={PROCS}:stubborn"], {})
  try:
    t0 = time.monotonic()
    pid = 0
    while time.monotonic() - t0 < 20 and not pid:
      sm.update(100)
      if sm.updated["managerState"] and sm["managerState"].processes[0].running:
        pid = sm["managerState"].processes[0].pid
    assert pid
    time.sleep(0.5)          # the child has installed its SIG_IGN handler
    mgr.send_signal(signal.SIGINT)
    out, _ = mgr.communicate(timeout=20)
  finally:
    if mgr.poll() is None:
      mgr.kill()
  assert mgr.returncode == 0, out
  assert "did not stop within 0.5 s; SIGKILL" in out
  assert "'stubborn': -9" in out
  assert not pid_alive(pid)
  sm.close()


def test_bad_arguments_and_missing_modules():
  r = subprocess.run([sys.executable, "-m", "selfdrive.manager", "--only", "nosuchproc"], cwd=ROOT,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "unknown process(es) ['nosuchproc']" in r.stderr
  prefix = f"m{uuid.uuid4().hex[:6]}"
  r = subprocess.run([sys.executable, "-m", "selfdrive.manager", "--prefix", prefix,
                      "--only", "ghost", "--add", "ghost=tests.selfdrive.no_such_module"], cwd=ROOT,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 1 and "module tests.selfdrive.no_such_module not found" in r.stderr
  assert not os.path.exists(messaging.prefix_dir(prefix))
  r = subprocess.run([sys.executable, "-m", "selfdrive.manager", "--add", "broken"], cwd=ROOT,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode != 0 and "expected name=module" in r.stderr
