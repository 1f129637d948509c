"""Simulator benchmark: render frames/s on one core at the model frame (256x128) and the EON road camera
(1164x874), closed-loop physics+labels steps/s without rendering, and the ratios to real time (20 fps). Also the
set-up of a world's renderer (its road texture: once per scenario, segment or simulator slot), in ms and in rendered
model frames.
Frames/s are given per wall-clock second and per CPU second of this process (the latter is less
disturbed by other jobs on a shared machine; the 1-minute load average is printed with them).

  python bench/sim.py [--quick]        # last stdout line: one JSON object with the figures
"""
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from common.cli import make_parser, tool_main  # noqa: E402
from common.modelconstants import CAMERA_HEIGHT_M, MODEL_FREQ  # noqa: E402
from common.transformations.camera import EON_ROAD_CAM, model_frame_camera  # noqa: E402
from tools.sim.env import SimEnv  # noqa: E402
from tools.sim.policies import PerfectPolicy  # noqa: E402
from tools.sim.render import Renderer  # noqa: E402
from tools.sim.road import RoadConfig  # noqa: E402
from tools.sim.scenarios import lane_keep_suite  # noqa: E402
from tools.sim.world import World, WorldConfig  # noqa: E402


def bench_render(world: World, cam, n: int) -> float:
  r = Renderer(world.road, world.appearance, cam, seed=world.seed)
  road = world.road
  s = np.linspace(60.0, 60.0 + 25.0 * n / MODEL_FREQ, n)
  d = road.lane_center_d(road.ego_lane)
  pts = road.frenet_to_world(s, np.full(n, d))
  psi = road.psi_at(s)
  poses = [np.array([p[0], p[1], p[2] - CAMERA_HEIGHT_M, 0.0, float(np.arctan(road.grade_at(si))), ps])
           for p, ps, si in zip(pts, psi, s)]
  cars = [world.car_boxes(si - 10, si + 400) for si in s]
  r.render(poses[0], cars[0])  # warm-up
  t0, c0 = time.perf_counter(), time.process_time()
  for p, c in zip(poses, cars):
    r.render(p, c)
  return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def bench_renderer_setup(worlds: list[World], cam) -> float:
  """Mean seconds to build a Renderer (road texture, rays, tree line) for each world."""
  t0 = time.perf_counter()
  for w in worlds:
    Renderer(w.road, w.appearance, cam, seed=w.seed)
  return (time.perf_counter() - t0) / len(worlds)


@tool_main
def main(argv=None) -> None:
  ap = make_parser("python bench/sim.py")
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args(argv)
  n_small, n_eon, n_steps = (200, 30, 400) if args.quick else (1000, 200, 2000)
  world = World(7, WorldConfig(road=RoadConfig(length=1500.0)))
  small, small_cpu = bench_render(world, model_frame_camera(256, 128, 455.0), n_small)
  eon, eon_cpu = bench_render(world, EON_ROAD_CAM, n_eon)
  setup_s = bench_renderer_setup([World(seed, WorldConfig()) for seed in range(2 if args.quick else 6)],
                                 model_frame_camera(256, 128, 455.0))
  env, pol = SimEnv(camera=None), PerfectPolicy()
  sc = lane_keep_suite()[1]                         # 20 s at 30 m/s; reset between runs (not timed)
  per_run = int(sc.duration * MODEL_FREQ)
  done, t_steps = 0, 0.0
  while done < n_steps:
    obs = env.reset(sc)
    info = env.info
    t0 = time.perf_counter()
    for _ in range(min(per_run, n_steps - done)):
      obs, info = env.step(pol(obs, info))
      done += 1
    t_steps += time.perf_counter() - t0
  steps = n_steps / t_steps
  out = {"render_fps_256x128": round(small, 1), "render_fps_1164x874": round(eon, 1),
         "realtime_x_256x128": round(small / MODEL_FREQ, 2), "realtime_x_1164x874": round(eon / MODEL_FREQ, 2),
         "closed_loop_steps_per_s_no_render": round(steps, 1), "realtime_x_no_render": round(steps / MODEL_FREQ, 2),
         "render_fps_cpu_time_256x128": round(small_cpu, 1), "render_fps_cpu_time_1164x874": round(eon_cpu, 1),
         "renderer_setup_ms": round(setup_s * 1e3, 1), "renderer_setup_in_frames_256x128": round(setup_s * small, 1),
         "target_fps_256x128": 200, "target_fps_1164x874": 20, "threads": 1,
         "load_avg_1min": round(os.getloadavg()[0], 2), "quick": args.quick}
  print(f"render 256x128: {small:.0f} fps, 1164x874: {eon:.1f} fps, closed loop (no render): {steps:.0f} steps/s, "
        f"a world's renderer set up in {setup_s * 1e3:.0f} ms")
  print(json.dumps(out))


if __name__ == "__main__":
  raise SystemExit(main())
