"""Regenerate the simulator's pictures in docs/images/ (sim_*.png, sim_drive.gif / .mp4).

  python -m tools.sim.docs_images [--out docs/images]
"""
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.cli import make_parser, tool_main
from common.transformations.camera import EON_ROAD_CAM, model_frame_camera
from tools.sim.convergence import run_scenario
from tools.sim.driver import HumanDriverConfig
from tools.sim.generate import simulate
from tools.sim.policies import BiasedPolicy, PerfectPolicy, StraightPolicy
from tools.sim.road import RoadConfig
from tools.sim.scenarios import lane_keep_suite
from tools.sim.world import WorldConfig


def _label(img, text):
  img = img.copy()
  cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
  return img


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.sim.docs_images", __doc__)
  ap.add_argument("--out", type=Path, default=Path("docs/images"))
  args = ap.parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  # EON road-camera frames of four worlds (half size in a 2x2 montage) and one at full size
  tiles = []
  for seed in tqdm((1, 4, 9, 12), desc="EON frames"):
    sim = simulate(seed, 4.0, EON_ROAD_CAM, WorldConfig(road=RoadConfig(length=600.0)))
    f = sim["frames"][-1]
    if seed == 1:
      cv2.imwrite(str(args.out / "sim_eon.png"), f[..., ::-1])
    tiles.append(_label(cv2.resize(f, (582, 437), interpolation=cv2.INTER_AREA), f"seed {seed}"))
  grid = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
  cv2.imwrite(str(args.out / "sim_eon_examples.png"), grid[..., ::-1])
  # model frames (256x128, focal 455, the world model's input) of eight worlds
  cam = model_frame_camera(256, 128, 455.0)
  tiles = []
  for seed in tqdm(range(20, 28), desc="model frames"):
    sim = simulate(seed, 2.0, cam, WorldConfig(road=RoadConfig(length=500.0)))
    tiles.append(sim["frames"][-1])
  grid = np.concatenate([np.concatenate(tiles[i:i + 4], 1) for i in (0, 4)], 0)
  cv2.imwrite(str(args.out / "sim_model_frames.png"), grid[..., ::-1])
  # a drive with lane changes: MP4 (h264, 512x256, 20 fps) and a short GIF (256x128, 10 fps)
  import av
  from PIL import Image
  sim = simulate(34, 12.0, cam, WorldConfig(road=RoadConfig(length=900.0, n_lanes=3)),
                 driver_cfg=HumanDriverConfig(lane_change_every=2.0))
  names = ["keep lane", "change left", "change right"]
  labelled = [_label(cv2.resize(f, (512, 256), interpolation=cv2.INTER_LINEAR), names[d])
              for f, d in zip(sim["frames"], sim["gt"]["desire"])]
  with av.open(str(args.out / "sim_drive.mp4"), mode="w") as c:
    st = c.add_stream("libx264", rate=20)
    st.width, st.height, st.pix_fmt = 512, 256, "yuv420p"
    st.options = {"crf": "23", "preset": "medium"}
    for f in labelled:
      for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(pkt)
    for pkt in st.encode():
      c.mux(pkt)
  gif = [Image.fromarray(cv2.resize(f, (256, 128), interpolation=cv2.INTER_AREA)) for f in labelled[80:240:2]]
  gif[0].save(args.out / "sim_drive.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
  # convergence traces of the reference controllers
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
  scs = [sc for sc in lane_keep_suite() if sc.heading_error == 0.0]
  for ax, pol in zip(axes, (PerfectPolicy(), StraightPolicy(), BiasedPolicy())):
    for sc in scs:
      r = run_scenario(pol, sc)
      ax.plot(r["trace"]["t"], r["trace"]["offset"], color="tab:green" if r["passed"] else "tab:red",
              ls="-" if sc.road_shape == "straight" else "--", lw=1)
    ax.axhspan(-0.3, 0.3, color="0.85", zorder=0)
    ax.set_title(f"{pol.name}"); ax.set_xlabel("t [s]"); ax.set_ylim(-2.2, 2.2)
  axes[0].set_ylabel("offset from lane centre [m] (+ right)")
  fig.suptitle("lane-keep convergence (solid: straight, dashed: R=300 m curve; green = passed)")
  fig.tight_layout()
  fig.savefig(args.out / "sim_convergence.png", dpi=90)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
