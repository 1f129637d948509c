"""Does a simulator's expert bring the car back? Drive each simulator with its own expert action from injected
deviations and measure where the car ends up.

  python -m training.onpolicy.expert_check --sim worldmodel --wm RUN --policy RUN --data DIR [DIR ...] --out DIR
                                           [--offset 1.0] [--heading 0] [--seconds 4] [--starts 1]
                                           [--wm-predecessor log] [--wm-rolling-anchor] [--wm-anchor-max-s S]

The on-policy learner copies the expert's action at every state it visits (training/onpolicy/learner.py), so an
expert that does not steer back to the logged path teaches the policy to leave it. Each episode starts at a logged
frame with the car `--offset` metres left and right of the logged pose (or `--heading` degrees either way), no action
noise, and steps the simulator with `Observation.expert_action` for `--seconds`. Reported: the mean absolute lateral
offset at the end (a returning expert ends under half of the largest offset of its episode) and the correlation
between the offset and the expert's correction (its desired curvature minus the logged curvature at that time:
positive = it steers back, since + offset is right of the path and + curvature is left). Writes expert_check.json
and expert_check.png.

The world-model options are the on-policy run's (RolloutConfig.wm_rolling_anchor, wm_anchor_max_s), so that the
check drives the simulator the learner is trained in.

The policy run only gives the model frame the simulators render in (its PolicyConfig); its weights are not used.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from common.cli import add_common_args, emit_result, make_parser, tool_main
from training.onpolicy.sim_worldmodel import PREDECESSORS
from training.onpolicy.simulator import SIM_DT, Deviation

RETURN_FRACTION = 0.5       # verdict: "returns" when the mean final offset is under this share of the largest one


def correction_correlation(offsets: np.ndarray, corrections: np.ndarray) -> float | None:
  """Pearson correlation of offset (+ right) and curvature correction (+ left); None when either is constant."""
  o, c = np.asarray(offsets, np.float64), np.asarray(corrections, np.float64)
  if len(o) < 3 or o.std() < 1e-9 or c.std() < 1e-12:
    return None
  return float(np.corrcoef(o, c)[0, 1])


def start_frames(sim, seg, steps: int, n: int, rng: np.random.Generator) -> list[int]:
  """Up to n frames of seg (on a 1 s grid) from which the simulator can run `steps` steps."""
  ok = [f for f in range(0, len(seg), 20) if sim.max_steps(seg, f) >= steps]
  if not ok:
    return []
  return sorted(int(f) for f in rng.choice(ok, min(n, len(ok)), replace=False))


def run_episode(sim, seg, frame: int, deviation: Deviation, steps: int) -> dict:
  """Follow the expert from `deviation` at `frame`; per step the offset, the expert's and the logged curvature."""
  obs = sim.reset(seg, frame, deviation)
  logged_k = seg.gt["curvature"] if "curvature" in seg.gt else np.zeros(len(seg))
  offs, expert, logged = [obs.lateral_offset], [float(obs.expert_action[0])], [float(logged_k[sim.logged_index])]
  for _ in range(steps):
    if obs.done:
      break
    obs = sim.step(obs.expert_action)
    offs.append(obs.lateral_offset)
    expert.append(float(obs.expert_action[0]))
    logged.append(float(logged_k[sim.logged_index]))
  return {"segment": str(seg.path), "frame": frame, "lateral": deviation.lateral,
          "heading_deg": float(np.degrees(deviation.heading)), "offset": offs, "expert_curvature": expert,
          "logged_curvature": logged}


def summarize(episodes: list[dict]) -> dict:
  """The check's figures from its episodes (see the module docstring)."""
  final = np.array([abs(e["offset"][-1]) for e in episodes])
  o = np.concatenate([e["offset"] for e in episodes])
  c = np.concatenate([np.subtract(e["expert_curvature"], e["logged_curvature"]) for e in episodes])
  corr = correction_correlation(o, c)
  peak = float(np.mean([np.max(np.abs(e["offset"])) for e in episodes]))   # the start offset, or where a heading led
  returns = bool(final.mean() < RETURN_FRACTION * peak) and (corr is None or corr > 0)
  return {"episodes": len(episodes), "mean_abs_start_offset_m": float(np.mean([abs(e["offset"][0]) for e in episodes])),
          "mean_abs_final_offset_m": float(final.mean()), "max_abs_final_offset_m": float(final.max()),
          "correction_correlation": corr, "returns": returns}


def plot(episodes: list[dict], summary: dict, title: str, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for e in episodes:
    t = np.arange(len(e["offset"])) * SIM_DT
    ax.plot(t, e["offset"], color="tab:green" if abs(e["offset"][-1]) < abs(e["offset"][0]) else "tab:red", lw=1)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xlabel("time following the expert (s)")
  ax.set_ylabel("offset from the logged path (m, + right)")
  verdict = "returns" if summary["returns"] else "does NOT return"
  ax.set_title(f"{title}: the expert {verdict} (mean final |offset| {summary['mean_abs_final_offset_m']:.2f} m)",
               fontsize=9)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def check(sim_name: str, policy_run, data, out_dir, wm_run=None, offset: float = 1.0, heading_deg: float = 0.0,
          seconds: float = 4.0, starts: int = 1, seed: int = 0, wm_predecessor: str = "generated",
          wm_rolling_anchor: bool = False, wm_anchor_max_s: float | None = None) -> dict:
  from tqdm import tqdm

  from tools.lib.route import scan_segments
  from training.onpolicy.actor import make_simulator
  from training.onpolicy.simulator import load_logged_segment
  from training.policy.model import load_policy_run
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  vision, _, _ = load_policy_run(policy_run)
  paths = [p for root in data for p in scan_segments(root, progress=False)[0]]
  if not paths:
    raise ValueError(f"{' '.join(map(str, data))}: no segments")
  sim = make_simulator(sim_name, vision.cfg.frame_spec, seed=seed, wm_run=str(wm_run) if wm_run else None,
                       wm_predecessor=wm_predecessor, wm_rolling_anchor=wm_rolling_anchor,
                       wm_anchor_max_s=wm_anchor_max_s)
  steps = max(1, int(round(seconds / SIM_DT)))
  rng = np.random.default_rng(seed)
  deviations = [Deviation(lateral=s * offset, heading=float(np.radians(s * heading_deg))) for s in (-1.0, 1.0)]
  plan = []
  for p in paths:
    seg = load_logged_segment(p, vision.cfg, out_dir / "cache")
    plan += [(seg, f, d) for f in start_frames(sim, seg, steps, starts, rng) for d in deviations]
  if not plan:
    raise ValueError(f"no segment is long enough for a {seconds:g} s episode in the {sim_name} simulator")
  t0 = time.monotonic()
  episodes = [run_episode(sim, seg, f, d, steps) for seg, f, d in tqdm(plan, desc=f"expert check {sim_name}",
                                                                          unit="episode")]
  summary = summarize(episodes)
  res = {"sim": sim_name, "wm": str(wm_run) if wm_run else None,
         "wm_predecessor": wm_predecessor if sim_name == "worldmodel" else None,
         "wm_rolling_anchor": wm_rolling_anchor if sim_name == "worldmodel" else None,
         "wm_anchor_max_s": wm_anchor_max_s if sim_name == "worldmodel" else None, "policy": str(policy_run),
         "data": [str(d) for d in data], "offset_m": offset, "heading_deg": heading_deg, "seconds": seconds,
         **summary, "wall_s": round(time.monotonic() - t0, 1)}
  (out_dir / "expert_check.json").write_text(json.dumps({**res, "runs": episodes}, indent=1))
  plot(episodes, summary, f"{sim_name} simulator", out_dir / "expert_check.png")
  return res


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.onpolicy.expert_check", __doc__.split("\n")[0])
  ap.add_argument("--sim", required=True, choices=("worldmodel", "reprojective", "procedural"))
  ap.add_argument("--wm", type=Path, default=None, help="world-model run (--sim worldmodel)")
  ap.add_argument("--policy", type=Path, required=True, help="policy run: the model frame the simulators render")
  ap.add_argument("--data", type=Path, nargs="+", required=True, help="generated segment folder(s)")
  ap.add_argument("--out", type=Path, required=True)
  ap.add_argument("--offset", type=float, default=1.0, help="initial lateral offset (m), each side")
  ap.add_argument("--heading", type=float, default=0.0, help="initial heading error (degrees), each side")
  ap.add_argument("--seconds", type=float, default=4.0, help="length of each episode")
  ap.add_argument("--starts", type=int, default=1, help="start frames per segment")
  ap.add_argument("--wm-predecessor", default="generated", choices=PREDECESSORS,
                  help="--sim worldmodel: the paper's rollout or the re-anchored one (training.onpolicy.sim_worldmodel)")
  ap.add_argument("--wm-rolling-anchor", action="store_true",
                  help="--sim worldmodel: a new anchor from the log when the anchor comes within 2 s")
  ap.add_argument("--wm-anchor-max-s", type=float, default=None, metavar="S",
                  help="--sim worldmodel: anchors 2 s to S s ahead instead of 2-9 s (S > 2)")
  add_common_args(ap, threads=1, threads_help="torch CPU threads", seed=0)
  args = ap.parse_args(argv)
  if args.sim == "worldmodel" and args.wm is None:
    ap.error("--sim worldmodel needs --wm RUN")
  for p in [args.policy, *args.data] + ([args.wm] if args.wm else []):
    if not p.is_dir():
      ap.error(f"{p}: not a directory")
  if args.seconds <= 0 or args.starts < 1 or (args.offset == 0 and args.heading == 0):
    ap.error("--seconds must be > 0, --starts >= 1, and --offset or --heading non-zero")
  from training.torch_args import set_threads
  set_threads(args.threads)
  try:
    res = check(args.sim, args.policy, args.data, args.out, args.wm, args.offset, args.heading, args.seconds,
                args.starts, args.seed, args.wm_predecessor, args.wm_rolling_anchor, args.wm_anchor_max_s)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{args.sim}: mean |offset| {res['mean_abs_start_offset_m']:.2f} m -> {res['mean_abs_final_offset_m']:.2f} m "
        f"after {args.seconds:g} s, correction correlation {res['correction_correlation']}; "
        f"{'returns' if res['returns'] else 'does NOT return'}")
  emit_result(res)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
