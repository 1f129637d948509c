"""Replay a recorded segment in real time, like openpilot's tools/replay: logged messages through cereal, road-camera
frames through VisionIPC ("camerad", VISION_STREAM_ROAD, NV12) with their logged frame ids and timestamps.

  python -m tools.replay.replay SEGMENT [--start S] [--playback X] [--no-loop] [--no-vipc] [--allow A,B] [--block A,B]
                                       [--non-interactive] [--prefix P]

SEGMENT, any of:
  * openpilot's layout   <route>--<n>/  rlog.zst (or qlog), fcamera.hevc matched through roadEncodeIdx
  * ours (simulator)     <dongle>|<route>/<n>/  rlog.zst + video.hevc (roadCameraState.frameId = video frame)
  * comma2k19            <dongle>|<route>/<n>/  global_pose/ + processed_log/ (+ video.hevc): no cereal log, so
                         roadCameraState (one per pose frame), carState (CAN speed, steering angle; IMU yaw rate)
                         are synthesised from it.

Timing follows logMonoTime: an event is published when (t_event - t_anchor) / playback has elapsed since the
anchor; seeking, pausing or changing speed re-anchors. Keys in a terminal (like openpilot's replay):
  space pause/resume   s / S  +10 s / -10 s   m / M  +60 s / -60 s   + / -  faster / slower   q  quit
Without a terminal on stdin, or with --non-interactive, it plays once per loop setting and takes no keys.
Last stdout line: JSON {segment, layout, messages, frames, loops, log_s, wall_s}.
"""
from __future__ import annotations

import argparse
import bisect
import os
import select
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cereal.services import SERVICE_LIST
from common.cli import emit_result, make_parser, tool_main

SPEEDS = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
VIPC_NAME = "camerad"
CAMERA_SERVICE = "roadCameraState"


class ReplayError(RuntimeError):
  pass


@dataclass
class ReplayEvent:
  t_ns: int               # logMonoTime
  service: str
  data: bytes             # the serialised Event, published as it was logged
  frame: int = -1         # road-camera events: index of the picture in the segment's video (-1: none)
  frame_id: int = 0
  sof: int = 0
  eof: int = 0


@dataclass
class ReplaySegment:
  path: Path
  layout: str                        # "openpilot" | "rlog" | "comma2k19"
  events: list[ReplayEvent]          # sorted by t_ns
  video_path: Path | None = None
  services: list[str] = field(default_factory=list)

  @property
  def start_ns(self) -> int:
    return self.events[0].t_ns

  @property
  def duration_s(self) -> float:
    return (self.events[-1].t_ns - self.events[0].t_ns) / 1e9


# ------------------------------------------------------------------ loading

def _camera_event(ev, data: bytes, frame: int) -> ReplayEvent:
  c = ev.roadCameraState
  return ReplayEvent(ev.logMonoTime, CAMERA_SERVICE, data, frame, int(c.frameId), int(c.timestampSof), int(c.timestampEof))


def _from_log(events, file_index, video_path: Path | None) -> list[ReplayEvent]:
  """Logged events -> ReplayEvents; file_index(frameId) gives the video index of a camera frame (KeyError: none)."""
  from cereal.messaging import event_to_bytes
  out = []
  for ev in events:
    which = ev.which()
    if which not in SERVICE_LIST:
      continue                      # initData and other non-service events are not published
    data = event_to_bytes(ev)
    if which == CAMERA_SERVICE:
      try:
        idx = file_index(int(ev.roadCameraState.frameId)) if video_path is not None else -1
      except KeyError:
        idx = -1
      out.append(_camera_event(ev, data, idx))
    else:
      out.append(ReplayEvent(ev.logMonoTime, which, data))
  out.sort(key=lambda e: e.t_ns)
  return out


def _interp(t_src, v_src, t):
  return np.interp(t, t_src, v_src) if len(t_src) else np.zeros_like(t)


def synthesize_comma2k19(seg) -> list[ReplayEvent]:
  """comma2k19 has no cereal log: one roadCameraState per pose frame (frameId = frame index, SOF = frame time) and a
  carState at each frame from the CAN speed / steering angle and the IMU yaw rate (device z is down: yaw rate = -gz)."""
  from cereal.messaging import new_message
  from tools.sim.messages import car_state_message
  t = np.asarray(seg.frame_times, dtype=np.float64)
  if len(t) == 0:
    raise ReplayError(f"{seg.path}: global_pose/frame_times is empty")
  if seg.has_log("CAN", "speed"):
    ts, vs = seg.can("speed")
    v = _interp(ts, vs, t)
  else:
    v = np.linalg.norm(np.asarray(seg.velocities, dtype=np.float64), axis=1)
  a = np.gradient(v, t) if len(t) > 1 else np.zeros_like(v)
  steer = _interp(*seg.can("steering_angle"), t) if seg.has_log("CAN", "steering_angle") else np.zeros_like(t)
  if seg.has_log("IMU", "gyro"):
    tg, g = seg.imu("gyro")
    yaw_rate = -_interp(tg, np.asarray(g)[:, 2], t)
  else:
    yaw_rate = np.zeros_like(t)
  n_video = None
  if seg.video_path.exists():
    n_video = len(seg.video)
  out = []
  for i, ti in enumerate(t):
    ns = round(float(ti) * 1e9)
    cam = new_message(CAMERA_SERVICE, logMonoTime=ns)
    c = cam.roadCameraState
    c.frameId, c.timestampSof, c.timestampEof = i, ns, ns + 50_000_000
    frame = i if n_video is not None and i < n_video else -1
    out.append(ReplayEvent(ns, CAMERA_SERVICE, cam.to_bytes(), frame, i, ns, ns + 50_000_000))
    cs = car_state_message(float(v[i]), float(a[i]), float(np.radians(steer[i])), float(yaw_rate[i]), 0,
                           log_mono_time=ns)
    out.append(ReplayEvent(ns, "carState", cs.to_bytes()))
  return out


def load_segment(path) -> ReplaySegment:
  """Any of the three layouts (module docstring); ReplayError names the file at fault."""
  from tools.lib.logreader import LOG_NAMES, LogCorruptError, LogReader
  from tools.lib.route import OpenpilotSegment, is_openpilot_segment_dir
  from tools.lib.segment import Segment, SegmentError
  p = Path(path)
  if not p.is_dir():
    raise ReplayError(f"{p}: segment directory not found")
  try:
    if is_openpilot_segment_dir(p):
      seg = OpenpilotSegment(p)
      video = seg.camera_path("fcamera")
      fi = seg.frame_index("fcamera") if video is not None else None
      events = _from_log(seg.events(), fi.file_index if fi is not None else None, video)
      layout = "openpilot"
    elif any((p / n).is_file() for n in LOG_NAMES):
      log_path = next(p / n for n in LOG_NAMES if (p / n).is_file())
      raw = list(LogReader(log_path))
      video = p / "video.hevc" if (p / "video.hevc").is_file() else None
      idx = {int(e.roadEncodeIdx.frameId): int(e.roadEncodeIdx.segmentId) for e in raw if e.which() == "roadEncodeIdx"}
      n_video = None
      if video is not None:
        from tools.lib.video import VideoReader
        with VideoReader(video) as vr:
          n_video = len(vr)

      def file_index(frame_id: int) -> int:
        i = idx[frame_id] if idx else frame_id      # our simulator numbers frames in video order
        if n_video is not None and not 0 <= i < n_video:
          raise KeyError(frame_id)
        return i
      events = _from_log(raw, file_index, video)
      layout = "rlog"
    elif (p / "global_pose").is_dir():
      seg = Segment(p)
      events = synthesize_comma2k19(seg)
      video = seg.video_path if seg.video_path.exists() else None
      layout = "comma2k19"
    else:
      raise ReplayError(f"{p}: not a segment (no rlog/qlog and no global_pose/)")
  except (SegmentError, LogCorruptError) as e:
    raise ReplayError(str(e)) from e
  except Exception as e:  # the video reader and capnp raise their own types
    if isinstance(e, ReplayError):
      raise
    raise ReplayError(f"{p}: cannot read the segment ({type(e).__name__}: {e})") from e
  if not events:
    raise ReplayError(f"{p}: no replayable messages")
  services = sorted({e.service for e in events})
  return ReplaySegment(p, layout, events, video, services)


# ------------------------------------------------------------------ playback

class Replay:
  """Real-time playback state machine; `handle_key` is the whole keyboard interface (tests feed it keys)."""

  def __init__(self, segment: ReplaySegment, start_s: float = 0.0, playback: float = 1.0, loop: bool = True,
               vipc: bool = True, allow: set[str] | None = None, block: set[str] | None = None,
               prefix: str | None = None, clock=time.monotonic):
    if not playback > 0:
      raise ValueError(f"--playback must be > 0, got {playback}")
    self.seg, self.loop, self.clock, self.prefix = segment, loop, clock, prefix
    keep = set(segment.services)
    if allow:
      keep &= set(allow)
    if block:
      keep -= set(block)
    self.events = [e for e in segment.events if e.service in keep]
    if not self.events:
      raise ReplayError(f"{segment.path}: no messages left after --allow/--block")
    self.times = [e.t_ns for e in self.events]
    self.t0 = segment.start_ns
    self.end_s = (self.times[-1] - self.t0) / 1e9
    self.speed = float(playback)
    self.paused, self.quit = False, False
    self.use_vipc = vipc and segment.video_path is not None and any(e.frame >= 0 for e in self.events)
    self.sent, self.frames_sent, self.loops = 0, 0, 0
    self.pubs: dict = {}
    self.vipc = None
    self.video = None
    self._seek_to(max(0.0, float(start_s)))

  # --- time bookkeeping ---
  def _anchor(self, log_s: float) -> None:
    self.anchor_log_s, self.anchor_wall = log_s, self.clock()

  def position_s(self) -> float:
    """Current log time (s from the segment's first event)."""
    if self.paused:
      return self.anchor_log_s
    return self.anchor_log_s + (self.clock() - self.anchor_wall) * self.speed

  def _seek_to(self, log_s: float) -> None:
    log_s = min(max(0.0, log_s), self.end_s)
    self.idx = bisect.bisect_left(self.times, self.t0 + int(log_s * 1e9))
    self._anchor(log_s)

  # --- keys ---
  def handle_key(self, key: str) -> None:
    if key == " ":
      if self.paused:
        self.paused = False
        self._anchor(self.anchor_log_s)
      else:
        self._anchor(self.position_s())
        self.paused = True
    elif key in ("s", "S", "m", "M"):
      step = {"s": 10.0, "S": -10.0, "m": 60.0, "M": -60.0}[key]
      paused = self.paused
      self._seek_to(self.position_s() + step)
      self.paused = paused
    elif key in ("+", "="):
      self._set_speed(next((s for s in SPEEDS if s > self.speed), self.speed))
    elif key in ("-", "_"):
      self._set_speed(next((s for s in reversed(SPEEDS) if s < self.speed), self.speed))
    elif key in ("q", "Q", "\x03"):
      self.quit = True

  def _set_speed(self, speed: float) -> None:
    self._anchor(self.position_s())
    self.speed = speed

  def status(self) -> str:
    return (f"{self.position_s():7.1f} / {self.end_s:.1f} s  {self.speed:g}x{'  PAUSED' if self.paused else ''}  "
            f"messages {self.sent}  frames {self.frames_sent}")

  # --- outputs ---
  def open(self) -> None:
    from cereal import messaging
    self.pubs = {s: messaging.pub_sock(s, prefix=self.prefix) for s in sorted({e.service for e in self.events})}
    if self.use_vipc:
      from cereal.visionipc import VisionIpcServer, VisionStreamType
      from tools.lib.video import VideoReader
      self.video = VideoReader(self.seg.video_path)
      self.vipc = VisionIpcServer(VIPC_NAME, prefix=self.prefix)
      self.vipc.create_buffers(VisionStreamType.VISION_STREAM_ROAD, 4, self.video.width, self.video.height)
      self.vipc.start_listener()

  def close(self) -> None:
    for s in self.pubs.values():
      s.close()
    self.pubs = {}
    if self.vipc is not None:
      self.vipc.close()
      self.vipc = None
    if self.video is not None:
      self.video.close()
      self.video = None

  def _publish(self, ev: ReplayEvent) -> None:
    if ev.service == CAMERA_SERVICE and self.vipc is not None and ev.frame >= 0:
      from cereal.visionipc import VisionStreamType, rgb_to_nv12
      rgb = self.video.frame(ev.frame)
      self.vipc.send(VisionStreamType.VISION_STREAM_ROAD, rgb_to_nv12(rgb), ev.frame_id, ev.sof, ev.eof)
      self.frames_sent += 1
    self.pubs[ev.service].send(ev.data)
    self.sent += 1

  # --- the loop ---
  def step(self, wait_key=None, max_wait: float = 0.05) -> bool:
    """Publish what is due; wait (for a key, or sleep) until the next event is due. False when playback ends."""
    if self.quit:
      return False
    if self.paused:
      self._wait(wait_key, max_wait)
      return True
    if self.idx >= len(self.events):
      if not self.loop:
        return False
      self.loops += 1
      self._seek_to(0.0)
    now_log = self.position_s()
    while self.idx < len(self.events) and (self.times[self.idx] - self.t0) / 1e9 <= now_log:
      self._publish(self.events[self.idx])
      self.idx += 1
    if self.idx < len(self.events):
      due = ((self.times[self.idx] - self.t0) / 1e9 - now_log) / self.speed
      if due > 0:
        self._wait(wait_key, min(due, max_wait))
    return True

  def _wait(self, wait_key, timeout: float) -> None:
    if wait_key is None:
      time.sleep(timeout)
      return
    k = wait_key(timeout)
    if k:
      for ch in k:
        self.handle_key(ch)

  def run(self, wait_key=None, on_status=None, status_every: float = 0.5) -> dict:
    t_start, last = time.monotonic(), 0.0
    self.open()
    try:
      time.sleep(0.2)   # let subscribers (re)connect to freshly bound sockets before the first message
      while self.step(wait_key):
        if on_status is not None and time.monotonic() - last > status_every:
          on_status(self.status())
          last = time.monotonic()
    finally:
      self.close()
    return {"segment": str(self.seg.path), "layout": self.seg.layout, "messages": self.sent,
            "frames": self.frames_sent, "loops": self.loops, "log_s": round(self.end_s, 3),
            "wall_s": round(time.monotonic() - t_start, 3)}


class TerminalKeys:
  """Single key presses from a terminal's stdin (cbreak mode), restored on exit."""

  def __init__(self, stream=None):
    self.stream = stream or sys.stdin
    self.fd = self.stream.fileno()
    self.old = None

  def __enter__(self):
    import termios
    import tty
    self.old = termios.tcgetattr(self.fd)
    tty.setcbreak(self.fd)
    return self

  def __exit__(self, *exc):
    import termios
    if self.old is not None:
      termios.tcsetattr(self.fd, termios.TCSADRAIN, self.old)

  def __call__(self, timeout: float) -> str:
    r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
    return os.read(self.fd, 16).decode(errors="ignore") if r else ""


def _service_list(arg: str | None, flag: str, ap: argparse.ArgumentParser) -> set[str] | None:
  if arg is None:
    return None
  names = {s.strip() for s in arg.split(",") if s.strip()}
  unknown = sorted(names - set(SERVICE_LIST))
  if unknown:
    ap.error(f"{flag}: unknown services {unknown} (known: cereal/services.py)")
  return names


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.replay.replay", __doc__.split("\n\n")[0])
  ap.add_argument("segment", help="segment folder (openpilot, simulator rlog or comma2k19 layout)")
  ap.add_argument("--start", type=float, default=0.0, metavar="S", help="start S seconds into the segment")
  ap.add_argument("--playback", type=float, default=1.0, metavar="X", help="playback speed factor (default 1)")
  ap.add_argument("--no-loop", action="store_true", help="stop at the end instead of starting over")
  ap.add_argument("--no-vipc", action="store_true", help="do not decode video or serve frames over VisionIPC")
  ap.add_argument("--allow", default=None, metavar="A,B", help="publish only these services")
  ap.add_argument("--block", default=None, metavar="A,B", help="never publish these services")
  ap.add_argument("--non-interactive", action="store_true", help="no keyboard (also when stdin is not a terminal)")
  ap.add_argument("--prefix", default=None, help="messaging prefix (default $WORLDPILOT_PREFIX)")
  args = ap.parse_args(argv)
  if not args.playback > 0:
    ap.error(f"--playback must be > 0, got {args.playback}")
  if args.start < 0:
    ap.error(f"--start must be >= 0, got {args.start}")
  allow, block = _service_list(args.allow, "--allow", ap), _service_list(args.block, "--block", ap)
  try:
    seg = load_segment(args.segment)
    rp = Replay(seg, args.start, args.playback, not args.no_loop, not args.no_vipc, allow, block, args.prefix)
  except (ReplayError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  interactive = not args.non_interactive and sys.stdin.isatty()
  print(f"replaying {seg.path} ({seg.layout}, {seg.duration_s:.1f} s, {len(rp.events)} messages, "
        f"{'VisionIPC frames' if rp.use_vipc else 'no frames'}) at {rp.speed:g}x"
        + ("  [space pause, s/S +-10 s, m/M +-60 s, +/- speed, q quit]" if interactive else ""), file=sys.stderr)
  try:
    if interactive:
      with TerminalKeys() as keys:
        result = rp.run(keys, on_status=lambda s: print("\r" + s + "\033[K", end="", file=sys.stderr, flush=True))
      print(file=sys.stderr)
    else:
      result = rp.run()
  except KeyboardInterrupt:
    result = {"segment": str(seg.path), "layout": seg.layout, "messages": rp.sent, "frames": rp.frames_sent,
              "loops": rp.loops, "interrupted": True}
  except Exception as e:  # VisionIPC / video errors: one line naming the segment
    print(f"error: {seg.path}: {type(e).__name__}: {e}", file=sys.stderr)
    return 1
  emit_result(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
