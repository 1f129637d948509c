"""Steady-state lateral response of a policy: how hard it steers back at a given offset from the lane centre.

  python -m tools.sim.response --policy path/to/exported_model_dir [--road straight curve] [--speeds 15 30]
         [--offsets -0.6 -0.3 0 0.3 0.6] [--json out.json] [--plot out.png]

For every (road, speed, offset d) the lane-keep scenario's road is driven with the car HELD at d (m, + right of the
lane centre) by the perfect controller (pure pursuit on the lane centre shifted by d), while the policy sees every
frame and says what it would do. Its desired curvature, averaged over the last `--average` seconds, is compared
with the perfect controller's at the same state (pure pursuit on the true centre: what brings the car back).

Per (road, speed) the summary gives `gain`, the slope of the policy's curvature against the reference's over the
offsets (1 = as hard as the reference; a policy too weak to return in time has gain << 1), and `bias`, the policy's
minus the reference's curvature at d = 0 (1/m, + = left; also as a lateral acceleration, m/s^2). A convergence
failure then reads as a number: a steady offset is a bias, a slow return a low gain, a gain that does not follow
the reference from 15 to 30 m/s a policy that has not learned how curvature scales with speed.
"""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.cli import emit_result, make_parser, tool_main
from common.modelconstants import MODEL_FREQ
from tools.sim.env import SimEnv
from tools.sim.policies import ModelPolicy, PerfectPolicy, make_policy
from tools.sim.scenarios import get_suite

HOLD_TAU_S = 1.0   # s: time constant of the holding controller's integral


def hold_offset(scenario, policy, offset: float, camera=None, seconds: float = 6.0, average: float = 3.0,
                reference=None) -> dict:
  """Drive `scenario`'s road held at `offset` (m, + right) by `reference` (a controller of the ground-truth `path`,
  default the perfect one) and return the mean curvature (1/m) the policy and the
  reference ask for over the last `average` s, and the mean offset actually held."""
  reference = reference or PerfectPolicy()
  sc = replace(scenario, lateral_offset=offset, heading_error=0.0, lane_change=0, duration=seconds)
  env = SimEnv(camera=camera)
  obs = env.reset(sc)
  info = env.info
  policy.reset()
  reference.reset()
  n, keep = int(round(seconds * MODEL_FREQ)), int(round(average * MODEL_FREQ))
  ks, refs, offs = [], [], []
  aim = offset
  for i in range(n):
    k_policy, _ = policy(obs, info)
    k_ref, _ = reference(obs, info)
    if i >= n - keep:
      ks.append(float(k_policy))
      refs.append(float(k_ref))
      offs.append(float(info["_target_offset"]))
    # the reference driving the centre shifted by `aim`; `aim` integrates the holding error (time constant
    # HOLD_TAU_S), since pure pursuit alone settles a few cm off a shifted curve
    aim += (offset - float(info["_target_offset"])) / (HOLD_TAU_S * MODEL_FREQ)
    shifted = np.array(info["path"], dtype=np.float64)
    shifted[:, 1] += aim
    obs, info = env.step((reference(obs, {**info, "path": shifted})[0], 0.0))
  return {"offset": float(np.mean(offs)), "policy": float(np.mean(ks)), "reference": float(np.mean(refs))}


def measure(policy, roads=("straight", "curve"), speeds=(15.0, 30.0), offsets=(-0.6, -0.3, 0.0, 0.3, 0.6),
            camera=None, seconds: float = 6.0, average: float = 3.0, progress: bool = True) -> dict:
  if not offsets or 0.0 not in offsets or len(set(offsets)) < 2:
    raise ValueError(f"offsets {offsets}: need at least two distinct offsets, one of them 0 (the bias)")
  suite = get_suite("lane-keep")
  cases = [(r, v, d) for r in roads for v in speeds for d in offsets]
  rows = []
  for road, v, d in tqdm(cases, desc="response", disable=not progress):
    base = next((s for s in suite if s.road_shape == road), None)
    if base is None:
      raise ValueError(f"road {road!r}: the lane-keep suite has {sorted({s.road_shape for s in suite})}")
    rows.append({"road": road, "speed": float(v), "target_offset": float(d),
                 **hold_offset(replace(base, speed=float(v)), policy, float(d), camera, seconds, average)})
  summary = []
  for road in roads:
    for v in speeds:
      rs = [r for r in rows if r["road"] == road and r["speed"] == float(v)]
      ref, pol = np.array([r["reference"] for r in rs]), np.array([r["policy"] for r in rs])
      gain = float(np.polyfit(ref, pol, 1)[0]) if np.ptp(ref) > 0 else float("nan")
      at0 = next(r for r in rs if r["target_offset"] == 0.0)
      bias = at0["policy"] - at0["reference"]
      summary.append({"road": road, "speed": float(v), "gain": gain, "bias": bias, "bias_lat_accel": bias * v * v})
  return {"rows": rows, "summary": summary}


def format_table(result: dict) -> str:
  lines = [f"{'road':<9} {'v m/s':>5}  {'gain':>6}  {'bias 1/m':>9}  {'bias m/s2':>9}"]
  for s in result["summary"]:
    lines.append(f"{s['road']:<9} {s['speed']:>5.0f}  {s['gain']:>6.2f}  {s['bias']:>+9.5f}  {s['bias_lat_accel']:>+9.3f}")
  return "\n".join(lines)


def plot(result: dict, path: Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  roads = sorted({r["road"] for r in result["rows"]}, key=["straight", "curve"].index)
  fig, axes = plt.subplots(1, len(roads), figsize=(4.2 * len(roads), 3.4), sharey=True, squeeze=False)
  for ax, road in zip(axes[0], roads):
    for j, v in enumerate(sorted({r["speed"] for r in result["rows"]})):
      rs = sorted((r for r in result["rows"] if r["road"] == road and r["speed"] == v), key=lambda r: r["offset"])
      x = [r["offset"] for r in rs]
      ax.plot(x, [r["reference"] for r in rs], "--", color=f"C{j}", label=f"reference {v:.0f} m/s")
      ax.plot(x, [r["policy"] for r in rs], "o-", color=f"C{j}", label=f"policy {v:.0f} m/s")
    ax.set_title(f"{road} road")
    ax.set_xlabel("held offset from the lane centre (m, + right)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("desired curvature (1/m, + left)")
  axes[0][-1].legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.sim.response", __doc__)
  ap.add_argument("--policy", required=True, help="perfect | straight | biased | PATH to an exported model dir")
  ap.add_argument("--road", nargs="+", default=["straight", "curve"], choices=["straight", "curve"])
  ap.add_argument("--speeds", nargs="+", type=float, default=[15.0, 30.0], help="m/s")
  ap.add_argument("--offsets", nargs="+", type=float, default=[-0.6, -0.3, 0.0, 0.3, 0.6], help="m, + right; include 0")
  ap.add_argument("--seconds", type=float, default=6.0, help="length of each held run")
  ap.add_argument("--average", type=float, default=3.0, help="average over the last this many seconds")
  ap.add_argument("--json", type=Path, default=None)
  ap.add_argument("--plot", type=Path, default=None)
  args = ap.parse_args(argv)
  if not 0 < args.average <= args.seconds:
    ap.error("--average must be in (0, --seconds]")
  if any(v <= 0 for v in args.speeds):
    ap.error("--speeds must be > 0")
  if args.policy not in ("perfect", "straight", "biased") and not Path(args.policy).is_dir():
    ap.error(f"--policy {args.policy!r} is neither a reference controller nor a model directory")
  policy = make_policy(args.policy)
  camera = policy.camera() if isinstance(policy, ModelPolicy) else None
  result = measure(policy, tuple(args.road), tuple(args.speeds), tuple(args.offsets), camera, args.seconds,
                   args.average)
  result["policy"] = args.policy
  print(format_table(result))
  if args.json is not None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
  if args.plot is not None:
    plot(result, args.plot, f"steady-state response: {args.policy}")
  emit_result({"policy": args.policy, "summary": result["summary"]})
  return 0


if __name__ == "__main__":
  sys.exit(main())
