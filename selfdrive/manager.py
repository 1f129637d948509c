"""manager: starts the daemons of one stack as child processes, watches them, shuts them down.

  python -m selfdrive.manager [--only loggerd,bridge] [--prefix P] [--add name=module[:function]]

Every process is `python -c "import module; module.main()"` in its own session (so a Ctrl-C in
the terminal reaches only the manager, which then stops the children in reverse start order),
with WORLDPILOT_PREFIX set to the stack's prefix.  A child that exits while the stack runs is
reported and restarted (after a back-off, at most `max_restarts` times); managerState is published
at 2 Hz.  SIGINT / SIGTERM: SIGTERM to every child's process group (the child and whatever it started), wait
`sigkill_timeout`, then SIGKILL the group.  The manager claims its prefix before starting anything: a second
manager on a prefix in use exits 1 (its managerState publisher cannot bind) and leaves the running stack alone.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cereal import messaging
from common.cli import make_parser, tool_main
from common.stop_signal import StopFlag

cloudlog = logging.getLogger("selfdrive.manager")

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ManagerProcess:
  name: str
  module: str                    # importable module with the entry point
  enabled: bool = True           # started by default (without --only)
  function: str = "main"
  args: tuple[str, ...] = ()     # command-line arguments: the entry point is called as function(list(args))
  restart: bool = True           # restart when it exits while the stack runs
  max_restarts: int = 5
  sigkill_timeout: float = 5.0   # seconds between SIGTERM and SIGKILL at shutdown
  # runtime state
  proc: subprocess.Popen | None = field(default=None, repr=False)
  restarts: int = 0
  exit_code: int | None = None
  next_start: float = 0.0
  missing: bool = False

  @property
  def running(self) -> bool:
    return self.proc is not None and self.proc.poll() is None

  def start(self, env: dict[str, str]) -> None:
    call = f"m.{self.function}({list(self.args)!r})" if self.args else f"m.{self.function}()"
    code = (f"import sys, {self.module} as m; "
            f"r = {call}; sys.exit(r if isinstance(r, int) else 0)")
    self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, start_new_session=True)
    self.exit_code = None
    cloudlog.info("started %s (%s) pid %d", self.name, self.module, self.proc.pid)

  def group_alive(self) -> bool:
    """Whether any live (non-zombie) process is left in the child's process group."""
    if self.proc is None:
      return False
    for entry in os.listdir("/proc"):
      if not entry.isdigit():
        continue
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except (FileNotFoundError, ProcessLookupError, IndexError):
        continue
      if int(fields[2]) == self.proc.pid and fields[0] != "Z":   # fields: state, ppid, pgrp, ...
        return True
    return False

  def signal(self, sig: int) -> None:
    """Signal the child's process group: it leads its own session, so its children are in the group too."""
    if self.proc is None:
      return
    try:
      os.killpg(self.proc.pid, sig)
    except (ProcessLookupError, PermissionError):
      pass


# The stack's daemons.  Entries whose module is not in this checkout are reported and skipped.
PROCS: list[ManagerProcess] = [
  ManagerProcess("bridge", "tools.sim.bridge", enabled=False),      # simulator side (tools/sim)
  ManagerProcess("modeld", "modeld.modeld"),
  ManagerProcess("controlsd", "selfdrive.controls.controlsd"),
  ManagerProcess("loggerd", "selfdrive.loggerd"),
]


def parse_added(specs: list[str]) -> list[ManagerProcess]:
  out = []
  for spec in specs:
    if "=" not in spec:
      raise ValueError(f"--add {spec!r}: expected name=module or name=module:function")
    name, target = spec.split("=", 1)
    module, _, function = target.partition(":")
    out.append(ManagerProcess(name, module, True, function or "main"))
  return out


class Manager:
  def __init__(self, procs: list[ManagerProcess], prefix: str, restart_backoff: float = 1.0):
    self.procs = procs
    self.prefix = messaging.get_prefix(prefix)
    self.restart_backoff = restart_backoff
    self.env = dict(os.environ)
    self.env[messaging.PREFIX_ENV] = self.prefix
    self.env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)]
                                             + [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p])
    self.stopping = False
    self.pm: messaging.PubMaster | None = None

  def start_all(self) -> None:
    # claim the prefix first: PublisherExistsError here means another stack runs on it
    self.pm = messaging.PubMaster(["managerState"], prefix=self.prefix)
    for p in self.procs:
      if self._module_missing(p.module):
        p.missing = True
        cloudlog.error("process %s: module %s not found in this checkout; skipped", p.name, p.module)
        continue
      p.start(self.env)

  @staticmethod
  def _module_missing(module: str) -> bool:
    try:
      return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
      return True

  def check(self) -> None:
    """Report children that exited; schedule and perform restarts."""
    now = time.monotonic()
    for p in self.procs:
      if p.missing or p.proc is None:
        continue
      code = p.proc.poll()
      if code is not None and p.exit_code is None:
        p.exit_code = code
        cloudlog.error("process %s exited with code %d (restarts so far: %d)", p.name, code, p.restarts)
        if p.restart and p.restarts < p.max_restarts:
          p.next_start = now + self.restart_backoff
        else:
          cloudlog.error("process %s will not be restarted", p.name)
      if p.exit_code is not None and p.restart and p.restarts < p.max_restarts and now >= p.next_start > 0:
        p.restarts += 1
        p.next_start = 0.0
        p.start(self.env)

  def publish_state(self) -> None:
    msg = messaging.new_message("managerState")
    lst = msg.managerState.init("processes", len(self.procs))
    for ps, p in zip(lst, self.procs):
      ps.name = p.name
      ps.pid = p.proc.pid if p.proc is not None else 0
      ps.running = p.running
      ps.shouldBeRunning = not p.missing and not self.stopping
      ps.exitCode = p.exit_code if p.exit_code is not None else 0
    self.pm.send("managerState", msg)

  def stop_all(self) -> dict[str, int | None]:
    """SIGTERM every child (reverse order), wait, SIGKILL what is left; returns exit codes."""
    self.stopping = True
    for p in reversed(self.procs):
      p.signal(signal.SIGTERM)
    for p in reversed(self.procs):
      if p.proc is None:
        continue
      deadline = time.monotonic() + p.sigkill_timeout
      try:
        p.proc.wait(p.sigkill_timeout)
      except subprocess.TimeoutExpired:
        cloudlog.error("process %s did not stop within %.1f s; SIGKILL", p.name, p.sigkill_timeout)
        p.signal(signal.SIGKILL)
        p.proc.wait()
      # what the child started got the same SIGTERM; what is still running at the deadline is killed
      while p.group_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
      if p.group_alive():
        cloudlog.error("process %s left processes in its group; SIGKILL", p.name)
        p.signal(signal.SIGKILL)
      p.exit_code = p.proc.returncode
    if self.pm is not None:
      self.publish_state()
      self.pm.close()
    codes = {p.name: p.exit_code for p in self.procs}
    cloudlog.info("all processes stopped: %s", codes)
    return codes


@tool_main
def main(argv: list[str] | None = None) -> int:
  ap = make_parser("python -m selfdrive.manager", "Start, watch and stop the daemons of one worldpilot stack.")
  ap.add_argument("--only", default=None, help="comma-separated process names to run (default: the enabled ones)")
  ap.add_argument("--prefix", default=None, help="messaging prefix of this stack (default $WORLDPILOT_PREFIX or 'default')")
  ap.add_argument("--add", action="append", default=[], metavar="NAME=MODULE[:FUNC]",
                  help="add a process to the table (repeatable)")
  ap.add_argument("--restart-backoff", type=float, default=1.0, help="seconds before restarting a crashed process")
  ap.add_argument("--sigkill-timeout", type=float, default=None, help="override every process's SIGTERM->SIGKILL wait")
  args = ap.parse_args(argv)

  try:
    table = PROCS + parse_added(args.add)
  except ValueError as e:
    ap.error(str(e))
  names = [p.name for p in table]
  if len(set(names)) != len(names):
    ap.error(f"duplicate process names in {names}")
  if args.only:
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
      ap.error(f"--only: unknown process(es) {unknown}; known: {names}")
    procs = [p for p in table if p.name in wanted]
  else:
    procs = [p for p in table if p.enabled]

  if args.sigkill_timeout is not None:
    for p in procs:
      p.sigkill_timeout = args.sigkill_timeout
  manager = Manager(procs, args.prefix, args.restart_backoff)
  stop = StopFlag()

  try:
    manager.start_all()
  except (messaging.PublisherExistsError, messaging.PrefixOwnershipError) as e:
    print(f"error: prefix {manager.prefix!r} is not available: {e}", file=sys.stderr)
    return 1
  if all(p.missing for p in procs):
    cloudlog.error("no process could be started")
    manager.stop_all()
    messaging.cleanup_prefix(manager.prefix)
    return 1
  last_state = 0.0
  try:
    while not stop:
      manager.check()
      if time.monotonic() - last_state > 0.5:
        manager.publish_state()
        last_state = time.monotonic()
      time.sleep(0.05)
  finally:
    manager.stop_all()
    messaging.cleanup_prefix(manager.prefix)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
