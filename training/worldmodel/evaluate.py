"""World-model evaluation (paper §5): multi-frame rollout quality, Plan Head accuracy, pose controllability.

  python -m training.worldmodel.evaluate --run RUN --data DIR [--frames 40] [--windows 8] [--split val|train|all]
                                        [--cache LATENT_CACHE]

Writes RUN/eval.json and RUN/eval_psnr.png (+ RUN/controllability.png):
  * rollout quality vs ground truth for horizons 1..N frames (5 Hz): PSNR and SSIM (own implementations below),
    LPIPS only when the `lpips` package AND its AlexNet backbone weights are already on disk (never downloaded);
    compared with the VAE reconstruction floor (decode(encode(gt))), the copy-last-frame baseline (the last real
    frame; the headline comparison), copy-last through the codec (the last context latent, decoded) and warp-last
    through the codec (the last context latent re-projected to each future pose by pose_warp: geometry alone);
  * Plan Head ADE/FDE (position, metres) of the most likely hypothesis on T_IDXS, with and without the future anchor,
    vs a constant-velocity baseline (current velocity held for 10 s, straight ahead);
  * pose controllability: same context, a left and a right turn -> the generated images must shift opposite ways
    (cv2.phaseCorrelate horizontal shift; a car turning LEFT sees the scene move RIGHT in the image).
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.cli import add_common_args, emit_result, make_parser, tool_main
from common.modelconstants import T_IDXS
from common.poses import compose_transitions
from training.worldmodel.pose_warp import warp_previous
from training.worldmodel.sample import Anchors, SampleOptions, rollout

# ------------------------------------------------------------------------------------------ image metrics


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """Images in [0, 1], (..., C, H, W) -> PSNR in dB per image (...)."""
  mse = (a.float() - b.float()).pow(2).flatten(-3).mean(-1)
  return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def gradient_energy(img: torch.Tensor) -> torch.Tensor:
  """Images in [0, 1], (..., C, H, W) -> mean squared difference of neighbouring pixels' luminance (x and y summed),
  per image (...): how much fine detail (lane lines, edges) a frame holds. Squared, so that a blur lowers it for an
  edge as well as for a thin line (a blurred step keeps its summed absolute differences); speckle raises it."""
  g = img.float().mean(-3)
  return (g[..., :, 1:] - g[..., :, :-1]).pow(2).flatten(-2).mean(-1) + \
    (g[..., 1:, :] - g[..., :-1, :]).pow(2).flatten(-2).mean(-1)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
  x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
  g = torch.exp(-x ** 2 / (2 * sigma ** 2))
  g = g / g.sum()
  return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
  """SSIM (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, data range 1), per image,
  averaged over channels and valid pixels. a, b (..., C, H, W) in [0, 1]."""
  shape = a.shape
  C = shape[-3]
  x, y = a.reshape(-1, C, *shape[-2:]).float(), b.reshape(-1, C, *shape[-2:]).float()
  w = _gaussian_window(window, sigma).to(x.device).expand(C, 1, window, window)
  conv = lambda z: F.conv2d(z, w, groups=C)  # noqa: E731  (valid region only)
  mu_x, mu_y = conv(x), conv(y)
  sxx = conv(x * x) - mu_x ** 2
  syy = conv(y * y) - mu_y ** 2
  sxy = conv(x * y) - mu_x * mu_y
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
  return s.flatten(1).mean(1).reshape(shape[:-3])


def lpips_metric():
  """An LPIPS callable (images in [0,1]) when lpips + its AlexNet weights are available locally, else
  (None, reason). Never downloads."""
  if importlib.util.find_spec("lpips") is None:
    return None, "lpips package not installed"
  hub = Path(torch.hub.get_dir()) / "checkpoints"
  if not list(hub.glob("alexnet-*.pth")):
    return None, f"AlexNet backbone weights not found in {hub} (never downloaded)"
  import lpips
  net = lpips.LPIPS(net="alex", verbose=False).eval()
  return (lambda a, b: net(a * 2 - 1, b * 2 - 1).flatten()), None


# ------------------------------------------------------------------------------------------ loading

EMA_MAX_INIT_WEIGHT = 0.05


def load_worldmodel_run(run_dir, device="cpu", weights: str = "auto", vae_dir=None):
  """(model, vae, cfg, run_config) from a run directory's newest loadable checkpoint.
  weights: 'ema', 'model', or 'auto' = the EMA unless it still gives > 5% weight to the random initial parameters
  (short runs), judged from the checkpoint's ema_init_weight (or decay**step when a run predates it).
  run_config['weights_used'] says which. vae_dir: decode with this VAE instead of the run's; it must encode exactly like
  the run's (e.g. `python -m training.vae finetune-decoder` of it), since the run learnt the run's latents."""
  from training.checkpoint import load_latest
  from training.vae import load_vae
  from training.worldmodel.dit import DiTConfig, build_model
  run_dir = Path(run_dir)
  ck = load_latest(run_dir)
  if ck is None:
    raise FileNotFoundError(f"{run_dir}: no loadable checkpoint (ckpt_*.json)")
  run_cfg = ck["config"]
  cfg = DiTConfig.from_dict(run_cfg["model"], source=run_dir)
  model = build_model(cfg)
  if weights not in ("auto", "ema", "model"):
    raise ValueError(f"weights must be 'auto', 'ema' or 'model', got {weights!r}")
  if weights == "auto":
    decay = float(run_cfg.get("args", {}).get("ema", 0.999))
    init_w = float(ck["extra"].get("ema_init_weight", decay ** ck["step"]))
    weights = "ema" if "ema" in ck["state"] and init_w <= EMA_MAX_INIT_WEIGHT else "model"
  model.load_state_dict(ck["state"][weights])
  model.to(device).eval()
  run_cfg = dict(run_cfg, weights_used=weights, step=ck["step"])
  vae = load_vae(run_cfg["vae"], device)
  if vae_dir is not None and Path(vae_dir).resolve() != Path(run_cfg["vae"]).resolve():
    from training.vae import same_encoder
    other = load_vae(vae_dir, device)
    if not same_encoder(other.ae, vae.ae):
      raise ValueError(f"{vae_dir}: its encoder differs from the run's VAE {run_cfg['vae']}; the world model predicts "
                       f"that VAE's latents, so only a VAE with the same encoder (training.vae finetune-decoder) "
                       f"can decode them")
    vae, run_cfg = other, dict(run_cfg, vae_used=str(vae_dir))
  return model, vae, cfg, run_cfg


def eval_windows(data, split: str, cfg, n_frames: int, n_windows: int, latent_root, seed: int = 0):
  """Deterministic evaluation windows with n_frames of ground-truth future after 'now' (and a valid anchor when
  the segment allows). split 'all': every segment under data (a folder of segments held out from training
  altogether). Returns (dataset, list of (segment index, current frame index))."""
  from training.data.dataset import WindowConfig, WorldModelDataset
  wc = WindowConfig(context_frames=cfg.context_frames, anchor_frames=cfg.anchor_frames, fps=cfg.fps,
                    frame_hw=cfg.frame_hw)
  ds = WorldModelDataset(data, None if split == "all" else split, wc, latent_root, deterministic=True, seed=seed)
  from tools.lib.route import open_segment
  ok, by_seg = [], {}
  for k, (si, c) in enumerate(ds.index):
    by_seg.setdefault(si, []).append((k, c))
  rng = np.random.default_rng(seed)
  for si, items in by_seg.items():
    nf = open_segment(ds.segments[si]).num_frames
    step = ds.step_of(si)
    good = [(k, c) for k, c in items if c + step * n_frames <= nf - 1]
    ok.extend(good)
  if not ok:
    raise ValueError(f"no evaluation windows with {n_frames} future frames in split {split!r}")
  pick = rng.choice(len(ok), size=min(n_windows, len(ok)), replace=False)
  return ds, [ok[i] for i in sorted(pick)]


def _future(ds, item_index: int, c: int, n_frames: int):
  """Ground-truth future of a window: latents (N,4,h,w), transitions (N,6), t_world (N,)."""
  from common.poses import relative_poses, transitions
  si, _ = ds.index[item_index]
  d = ds._seg(si)
  step = ds.step_of(si)
  idx = c + step * np.arange(0, n_frames + 1)         # now, then N future frames
  poses = relative_poses(d.positions[idx], d.quats[idx], 0, d.calib)
  trans = transitions(poses)[1:]
  return (d.images(idx[1:]), torch.from_numpy(trans).float(), torch.from_numpy(d.times[idx[1:]] - d.t0).float())


# controllability passes when the left/right difference is at least this share of the geometric expectation
CONTROL_MIN_FRACTION = 0.25


def warp_last(last_lat: torch.Tensor, future_transitions: torch.Tensor, cfg) -> torch.Tensor:
  """The last context latent (1,C,h,w) seen from each of N future poses, given as transitions (N,6) from "now":
  what geometry alone predicts (pose_warp: flat road + far scene), (N,C,h,w)."""
  rel = compose_transitions(np.concatenate([np.zeros((1, 6)), future_transitions.cpu().numpy()]))[1:]
  n = len(rel)
  return warp_previous(last_lat.expand(n, -1, -1, -1), torch.from_numpy(rel).float().to(last_lat.device),
                       cfg.frame_hw, downsample=cfg.frame_hw[1] // last_lat.shape[-1],
                       cam_height=cfg.warp_cam_height, max_depth=cfg.warp_max_depth, mode=cfg.warp_mode)


def _to01(img: torch.Tensor) -> torch.Tensor:
  return ((img.float() + 1) / 2).clamp(0, 1)


@dataclass(frozen=True)
class EvalConfig:
  """What evaluate_run measures: `frames` frames ahead (5 Hz) on `windows` windows of `split`, each rolled out `draws`
  times (the model's figures are their mean) with `steps` Euler steps per frame, starting noise scaled by
  `temperature` and finished frames re-noised to `ctx_noise_tau` before they become context; `seed` picks the windows
  and the noise."""
  frames: int = 40
  windows: int = 8
  split: str = "val"
  steps: int = 15
  draws: int = 1
  temperature: float = 1.0
  ctx_noise_tau: float = 0.0
  seed: int = 0

  def __post_init__(self):
    if self.draws < 1:
      raise ValueError(f"draws must be >= 1, got {self.draws}")

  def sample_options(self) -> SampleOptions:
    return SampleOptions(steps=self.steps, temperature=self.temperature, ctx_noise_tau=self.ctx_noise_tau,
                         with_plans=False)


# image figures per horizon, in eval.json's order; LPIPS (when available) after them
IMAGE_FIGURES = ("psnr_model", "psnr_copy_last", "psnr_copy_last_codec", "psnr_vae_floor", "psnr_warp_last_codec",
                 "ssim_warp_last_codec", "ssim_model", "ssim_copy_last", "ssim_copy_last_codec", "ssim_vae_floor",
                 "latent_mse_model", "latent_mse_copy_last", "sharpness_model", "sharpness_copy_last_codec",
                 "sharpness_warp_last_codec", "sharpness_vae_floor")
LPIPS_FIGURES = ("lpips_model", "lpips_copy_last", "lpips_vae_floor")


@torch.no_grad()
def evaluate_run(run_dir, data, ec: EvalConfig = EvalConfig(), device="cpu", out_dir=None, weights: str = "auto",
                 vae_dir=None, cache=None) -> dict:
  """Evaluate a run's newest checkpoint (weights: see load_worldmodel_run) on `data`; write eval.json, eval_psnr.png
  and controllability.png to out_dir (default run_dir) and return the summary. vae_dir: decode with this VAE.
  cache: latent cache root holding `data`'s segments (`python -m training.vae encode` with the run's VAE), when they
  are not in the run's own cache (e.g. a test set made after training)."""
  model, vae, cfg, run_cfg = load_worldmodel_run(run_dir, device, weights, vae_dir)
  out_dir = Path(out_dir or run_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  latent_root = run_cfg.get("latent_root")
  if cache is not None:   # the same VAE identity / frame size folder under another cache root (store_root)
    latent_root = Path(cache) / Path(latent_root).parent.name / Path(latent_root).name
  ds, wins, split = _windows(data, ec, cfg, latent_root)
  lp, lp_reason = lpips_metric()
  sums, plan_err, n_anchor = rollout_figures(model, vae, ds, wins, ec, lp, device)
  summary = {"step": run_cfg["step"], "weights": run_cfg["weights_used"], "split": split, "windows": len(wins),
             "windows_with_anchor": n_anchor, "frames": ec.frames, "euler_steps": ec.steps,
             "ctx_noise_tau": ec.ctx_noise_tau, "draws": ec.draws, "temperature": ec.temperature,
             "vae": run_cfg.get("vae_used", run_cfg["vae"]), "data": str(data), "latent_root": str(latent_root),
             "lpips": "computed" if lp is not None else f"skipped: {lp_reason}"}
  summary.update(summarize(sums, plan_err, len(wins), ec.frames))
  summary["controllability"] = pose_controllability(model, vae, ds, wins, out_dir / "controllability.png",
                                                    ControlCheck(steps=ec.steps, temperature=ec.temperature), device)
  write_eval(summary, out_dir)
  return summary


def _windows(data, ec: EvalConfig, cfg, latent_root):
  """(dataset, windows, split as reported): split 'val' falls back to the training routes on tiny datasets, and says so."""
  try:
    return (*eval_windows(data, ec.split, cfg, ec.frames, ec.windows, latent_root, ec.seed), ec.split)
  except ValueError:
    if ec.split != "val":
      raise
    ds, wins = eval_windows(data, "train", cfg, ec.frames, ec.windows, latent_root, ec.seed)
    return ds, wins, "train (no usable val windows)"


def rollout_figures(model, vae, ds, wins, ec: EvalConfig, lp, device) -> tuple[dict, dict, int]:
  """Every window rolled out and scored: (per-horizon sums over windows of IMAGE_FIGURES (+ LPIPS_FIGURES when lp is
  given), {"anchor" | "no_anchor" | "const_vel": [(ADE, FDE) per window]}, windows with an anchor)."""
  from tqdm import tqdm
  C = model.cfg.context_frames
  sums = {k: np.zeros(ec.frames) for k in IMAGE_FIGURES + (LPIPS_FIGURES if lp is not None else ())}
  plan_err = {"anchor": [], "no_anchor": [], "const_vel": []}
  n_anchor = 0
  g = torch.Generator(device=device).manual_seed(ec.seed)
  for k, c in tqdm(wins, desc="evaluate windows"):
    item = ds[k]
    lat = item["latents"][None].to(device)
    anchors = None
    if bool(item["anchor_valid"]):
      anchors = Anchors(item["anchors"][None].to(device), item["anchor_pose"][None].to(device),
                        item["anchor_t"][None].to(device))
      n_anchor += 1
    fut_lat, fut_trans, fut_t = _future(ds, k, c, ec.frames)
    gt_lat = fut_lat.to(device)
    # `draws` independent rollouts of the same window (one draw of the noise each): the model's figures are their
    # mean, so that comparisons are not at the mercy of one noise draw (about +-0.3 dB on 16 windows x 5 frames)
    draws = [rollout(model, lat[:, :C], item["transitions"][None, :C].to(device), item["t_world"][None, :C].to(device),
                     fut_trans[None].to(device), fut_t[None].to(device), anchors, ec.sample_options(),
                     generator=g)["frames"][0]
             for _ in range(ec.draws)]
    gt, last = _true_frames(ds, k, c, ec.frames, model.cfg.frame_hw, device)
    baselines = _baselines(vae, model.cfg, lat[0, C - 1:C], gt_lat, fut_trans, last)
    # in the codec's own space (independent of the VAE's reconstruction floor)
    sums["latent_mse_copy_last"] += (lat[0, C - 1:C] - gt_lat).pow(2).flatten(1).mean(1).cpu().numpy()
    for x in draws:
      sums["latent_mse_model"] += (x - gt_lat).pow(2).flatten(1).mean(1).cpu().numpy() / ec.draws
    preds = [("model", _to01(vae.decode(x)), 1.0 / ec.draws) for x in draws]   # (N,3,H,W) each
    _add_image_figures(sums, preds + [(name, img, 1.0) for name, img in baselines.items()], gt, lp)
    _add_plan_errors(plan_err, model, item, lat, anchors)
  return sums, plan_err, n_anchor


def _true_frames(ds, k, c: int, n: int, frame_hw, device) -> tuple[torch.Tensor, torch.Tensor]:
  """Window k's ground-truth frames 1..n ahead (n,3,H,W) and its frame "now" repeated n times, in [0, 1]: the model
  frames themselves (not VAE reconstructions)."""
  from training.data.frames import SegmentFrames
  from training.vae import images_to_tensor
  si = ds.index[k][0]
  fr = SegmentFrames(ds.segments[si], frame_hw)
  step = ds.step_of(si)
  gt = _to01(images_to_tensor(np.stack([fr.frame(c + step * (j + 1)) for j in range(n)])).to(device))
  last = _to01(images_to_tensor(fr.frame(c)[None]).to(device)).expand_as(gt)
  fr.close()
  return gt, last


def _baselines(vae, cfg, last_lat, gt_lat, fut_trans, last) -> dict[str, torch.Tensor]:
  """The baselines' frames (n,3,H,W) in [0, 1], from the last context latent last_lat (1,c,h,w), the true future
  latents gt_lat (n,c,h,w) and transitions fut_trans (n,6), and the true frame "now" `last`."""
  n = len(gt_lat)
  return {"copy_last": last,
          # the last context latent decoded (what a world model that predicts "no motion" would show); separates the
          # model's dynamics from the codec's floor
          "copy_last_codec": _to01(vae.decode(last_lat)).expand(n, -1, -1, -1),
          # the last context latent seen from each future frame's pose (relative to "now"): what geometry alone
          # predicts (flat road + far scene), the baseline a pose-aware model has to beat
          "warp_last_codec": _to01(vae.decode(warp_last(last_lat, fut_trans, cfg))),
          "vae_floor": _to01(vae.decode(gt_lat))}


def _add_image_figures(sums: dict, preds: list, gt: torch.Tensor, lp) -> None:
  """Add PSNR, SSIM, sharpness (the frame's gradient energy over the true frame's; not for copy_last, a true frame
  "now", about 1) and LPIPS (not for the codec baselines) per horizon of each (name, frames, weight) to `sums`."""
  gt_energy = gradient_energy(gt).clamp(min=1e-6)
  for name, pred, wgt in preds:
    sums[f"psnr_{name}"] += wgt * psnr(pred, gt).cpu().numpy()
    sums[f"ssim_{name}"] += wgt * ssim(pred, gt).cpu().numpy()
    if f"sharpness_{name}" in sums:
      sums[f"sharpness_{name}"] += wgt * (gradient_energy(pred) / gt_energy).cpu().numpy()
    if lp is not None and not name.endswith("_codec"):
      sums[f"lpips_{name}"] += wgt * lp(pred.cpu(), gt.cpu()).numpy()


def _add_plan_errors(plan_err, model, item, lat, anchors) -> None:
  """The Plan Head at "now", with the anchor (when there is one) and without, and the constant-velocity baseline:
  (ADE, FDE) in metres of the most likely hypothesis against the window's plan target."""
  from training.mhp import best_hypothesis
  from training.worldmodel.plan_head import denormalize_plan
  C, dev = model.cfg.context_frames, lat.device
  target = item["plan"][:, :3].numpy()
  mask = item["plan_mask"].numpy().astype(bool)
  for name, use_anchor in (("anchor", True), ("no_anchor", False)):
    if use_anchor and anchors is None:
      continue
    out = model(lat[:, :C], item["transitions"][None, :C].to(dev), torch.zeros(1, C, device=dev),
                item["t_world"][None, :C].to(dev), *(anchors.args() if use_anchor else ()), plan_index=-1).plan
    plan = denormalize_plan(best_hypothesis(out.logits, out.mean))[0, :, :3].cpu().numpy()
    plan_err[name].append(_ade_fde(plan, target, mask))
  v0 = item["plan"][0, 3:6].numpy()
  plan_err["const_vel"].append(_ade_fde(T_IDXS[:, None] * v0[None], target, mask))


def summarize(sums: dict, plan_err: dict, n_windows: int, n_frames: int) -> dict:
  """Means over windows: per horizon (rounded to 4 decimals), the plan errors, and the headline comparisons over the
  first 5 frames."""
  out = {key: [round(float(x), 4) for x in v / n_windows] for key, v in sums.items()}
  for name, errs in plan_err.items():
    if errs:
      out[f"plan_ade_{name}_m"] = float(np.mean([e[0] for e in errs]))
      out[f"plan_fde_{name}_m"] = float(np.mean([e[1] for e in errs]))
  h5 = min(5, n_frames)
  first5 = lambda key: float(np.mean(out[key][:h5]))  # noqa: E731
  out["psnr_5frame_model"] = first5("psnr_model")
  out["psnr_5frame_copy_last"] = first5("psnr_copy_last")
  out["beats_copy_last_5frame"] = out["psnr_5frame_model"] > out["psnr_5frame_copy_last"]
  for metric, name in (("psnr", "vae_floor"), ("psnr", "copy_last_codec"), ("psnr", "warp_last_codec"),
                       ("ssim", "model"), ("ssim", "copy_last"), ("latent_mse", "model"), ("latent_mse", "copy_last")):
    out[f"{metric}_5frame_{name}"] = first5(f"{metric}_{name}")
  # sharpness at the last horizon: a rollout that keeps its lane lines stays near the codec floor's
  for name in ("model", "vae_floor", "copy_last_codec", "warp_last_codec"):
    out[f"sharpness_last_{name}"] = out[f"sharpness_{name}"][-1]
  if "plan_ade_anchor_m" in out:
    out["plan_with_anchor_beats_const_vel"] = out["plan_ade_anchor_m"] < out["plan_ade_const_vel_m"]
  return out


def write_eval(summary: dict, out_dir: Path) -> None:
  """eval.json (the summary) and eval_psnr.png (PSNR and SSIM per horizon: the model and the baselines)."""
  (out_dir / "eval.json").write_text(json.dumps(summary, indent=1))
  _plot(summary, out_dir / "eval_psnr.png")


def _ade_fde(plan: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  err = np.linalg.norm(plan - target, axis=-1)
  if not mask.any():
    return float("nan"), float("nan")
  last = np.flatnonzero(mask)[-1]
  return float(err[mask].mean()), float(err[last])


def _plot(summary: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [m for m in ("psnr", "ssim", "sharpness") if f"{m}_model" in summary]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
  h = np.arange(1, summary["frames"] + 1)
  for ax, m in zip(axes, panels):
    for name, style in (("model", "-o"), ("copy_last", "--"), ("copy_last_codec", "-."), ("warp_last_codec", "-x"),
                        ("vae_floor", ":")):
      if f"{m}_{name}" in summary:
        ax.plot(h, summary[f"{m}_{name}"], style, ms=3, label=name)
    ax.set_xlabel("frames ahead (5 Hz)")
    ax.set_title("sharpness (image gradients / the true frame's)" if m == "sharpness" else m.upper())
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def turn_transitions(n: int, speed: float, yaw_rate: float, fps: float) -> torch.Tensor:
  """(n,6) transitions of a constant-speed turn; yaw_rate about z-down (positive = RIGHT turn)."""
  dt = 1.0 / fps
  dyaw = yaw_rate * dt
  tr = torch.zeros(n, 6)
  tr[:, 0] = speed * dt * math.cos(dyaw / 2)
  tr[:, 1] = speed * dt * math.sin(dyaw / 2)
  tr[:, 5] = dyaw
  return tr


@dataclass(frozen=True)
class ControlCheck:
  """Settings of pose_controllability: a turn at +-yaw_rate rad/s for n_frames 5 Hz frames, sampled with `steps`
  Euler steps at `temperature` from `seed`."""
  n_frames: int = 5
  yaw_rate: float = 0.1
  steps: int = 15
  seed: int = 0
  temperature: float = 1.0


class _ShiftMeter:
  """Horizontal image shift (pixels, + = content moves right) of frame b against frame a by cv2.phaseCorrelate on
  the grey images, Hann-windowed: without the window the FFT sees the frame's edges (repeated borders, content
  entering at one side) as a discontinuity and the correlation peak of a small real shift gets lost (a 9 px turn read
  as 0 px). NaN when there is no peak: with a near-zero response OpenCV's sub-pixel centroid can land anywhere
  (thousands of pixels off a 256 px frame) and one such value would swamp a mean; a shift beyond half the frame width
  is impossible and is dropped the same way."""

  def __init__(self, frame_hw: tuple[int, int]):
    import cv2
    self.cv2 = cv2
    self.hann = cv2.createHanningWindow((frame_hw[1], frame_hw[0]), cv2.CV_32F)
    self.half_width = frame_hw[1] / 2

  def __call__(self, a: torch.Tensor, b: torch.Tensor) -> float:
    gray = lambda x: np.float32(x.mean(0).numpy())  # noqa: E731
    dx = float(self.cv2.phaseCorrelate(gray(a), gray(b), self.hann)[0][0])
    return dx if math.isfinite(dx) and abs(dx) <= self.half_width else float("nan")


def _turn_shifts(model, vae, item, check: ControlCheck, meter: _ShiftMeter, device) -> tuple[dict, tuple]:
  """One window: the shifts of the generated (left, right) and re-projected (geo_left, geo_right) frames against the
  last context frame, and (context frame, generated frames, the speed) for the picture."""
  C, fps = model.cfg.context_frames, model.cfg.fps
  lat = item["latents"][None].to(device)
  speed = float(item["transitions"][C - 1, 0]) * fps
  t_fut = item["t_world"][C - 1] + torch.arange(1, check.n_frames + 1) / fps
  ref = _to01(vae.decode(lat[0, C - 1:C])).cpu()[0]
  shifts, gen = {}, {}
  for name, yr in (("left", -check.yaw_rate), ("right", check.yaw_rate)):
    turn = turn_transitions(check.n_frames, speed, yr, fps)
    r = rollout(model, lat[:, :C], item["transitions"][None, :C].to(device), item["t_world"][None, :C].to(device),
                turn[None].to(device), t_fut[None].to(device),
                opts=SampleOptions(steps=check.steps, temperature=check.temperature, with_plans=False),
                generator=torch.Generator(device=device).manual_seed(check.seed))
    gen[name] = _to01(vae.decode(r["frames"][0])).cpu()
    shifts[name] = [meter(ref, f) for f in gen[name]]
    geo = warp_last(lat[0, C - 1:C], turn, model.cfg)
    shifts["geo_" + name] = [meter(ref, f) for f in _to01(vae.decode(geo)).cpu()]
  return shifts, (ref, gen, speed)


@torch.no_grad()
def pose_controllability(model, vae, ds, windows, png_path=None, check: ControlCheck = ControlCheck(),
                         device="cpu") -> dict:
  """Same context, two futures: turning left (yaw_rate < 0 about z-down) and right, on each of `windows`.
  The horizontal image shift of each generated frame relative to the last context frame (_ShiftMeter) is averaged over
  windows (an estimate without a correlation peak is left out and counted in `shifts_without_peak`). A camera that
  yaws by psi sees distant content move by focal * tan(psi) (a LEFT turn moves it RIGHT), which gives the expected
  shift; `fraction_of_expected` is the measured left-minus-right difference over the expected one (1 = the geometry
  exactly, 0 = no control).
  `geometry_fraction_of_expected` is the same measurement on the last context latent re-projected to the turned poses
  (pose_warp, no network): what this check reports for frames that do move with the camera, on these windows."""
  from training.data.frames import model_frame_focal
  focal = model_frame_focal(model.cfg.frame_hw[1])
  expected = np.array([focal * math.tan(check.yaw_rate * (j + 1) / model.cfg.fps) for j in range(check.n_frames)])
  meter = _ShiftMeter(model.cfg.frame_hw)
  shifts = {"left": [], "right": [], "geo_left": [], "geo_right": []}
  first = None
  for k, _ in windows:
    window_shifts, frames = _turn_shifts(model, vae, ds[k], check, meter, device)
    for name, v in window_shifts.items():
      shifts[name].append(v)
    first = first or (frames, window_shifts)
  if any(np.isnan(v).all(0).any() for v in shifts.values()):
    raise ValueError("pose_controllability: phase correlation found no shift for some frame on every window")
  left, right = np.nanmean(shifts["left"], 0), np.nanmean(shifts["right"], 0)
  diff = left - right
  geo_diff = np.nanmean(shifts["geo_left"], 0) - np.nanmean(shifts["geo_right"], 0)
  (ref, gen, speed), first_shifts = first
  out = {"yaw_rate_rad_s": check.yaw_rate, "windows": len(windows), "speed_m_s": speed,
         "shifts_without_peak": int(sum(np.isnan(v).sum() for v in shifts.values())),
         "shift_px_left_turn": [round(float(x), 2) for x in left],
         "shift_px_right_turn": [round(float(x), 2) for x in right],
         "expected_shift_px_left_turn": [round(float(x), 2) for x in expected],
         "left_minus_right_px": float(np.mean(diff)),
         "fraction_of_expected": float(np.mean(diff / (2 * expected))),
         "geometry_fraction_of_expected": float(np.mean(geo_diff / (2 * expected)))}
  out["moves_in_turn_direction"] = out["left_minus_right_px"] > 0
  # "the images move accordingly": the right way AND by a real share of what the camera geometry says
  out["moves_as_expected"] = out["fraction_of_expected"] >= CONTROL_MIN_FRACTION
  if png_path is not None:
    _plot_controllability(png_path, ref, gen, first_shifts, expected.tolist(), check.yaw_rate)
  return out


def _plot_controllability(path, ref, gen: dict, shifts: dict, expected: list, yaw_rate: float) -> None:
  """One window of pose_controllability: the context frame "now", then the left- and right-turn frames with their
  measured and geometric shifts."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n_frames = len(expected)
  fig, axes = plt.subplots(2, n_frames + 1, figsize=(2.6 * (n_frames + 1), 3.2))
  for row, name in enumerate(("left", "right")):
    axes[row, 0].imshow(ref.permute(1, 2, 0).numpy())
    axes[row, 0].set_title("context (now)", fontsize=7)
    sign = 1 if name == "left" else -1
    for j in range(n_frames):
      axes[row, j + 1].imshow(gen[name][j].permute(1, 2, 0).numpy())
      axes[row, j + 1].set_title(f"{name} +{j + 1}: {shifts[name][j]:+.1f}px (geometry {sign * expected[j]:+.1f})",
                                 fontsize=6)
    for ax in axes[row]:
      ax.axis("off")
  fig.suptitle(f"pose controllability: same context, yaw rate {yaw_rate:+.2f} rad/s left vs right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


@tool_main
def main(argv=None):
  ap = make_parser("python -m training.worldmodel.evaluate", __doc__.split("\n")[0])
  ap.add_argument("--run", required=True)
  ap.add_argument("--data", required=True)
  ap.add_argument("--frames", type=int, default=40)
  ap.add_argument("--windows", type=int, default=8)
  ap.add_argument("--split", default="val", choices=("val", "train", "all"),
                  help="which routes of --data (by the route hash); all: a held-out folder never trained on")
  ap.add_argument("--cache", default=None, help="latent cache root for --data's segments if not the run's own "
                  "(fill it with `python -m training.vae encode --vae <the run's VAE>`)")
  ap.add_argument("--steps", type=int, default=15)
  ap.add_argument("--draws", type=int, default=1,
                  help="rollouts per window with fresh sampling noise; the model's figures are their mean")
  ap.add_argument("--ctx-noise", type=float, default=0.0, metavar="TAU",
                  help="re-noise each generated frame to this level before it becomes context (default 0: clean)")
  ap.add_argument("--temperature", type=float, default=1.0,
                  help="scale of the starting noise of every frame (1: the model's distribution)")
  ap.add_argument("--vae", default=None, help="decode with this VAE (same encoder as the run's, e.g. a fine-tuned "
                  "decoder from `python -m training.vae finetune-decoder`)")
  ap.add_argument("--weights", default="auto", choices=("auto", "ema", "model"))
  ap.add_argument("--out", default=None, help="where eval.json and the pictures go (default RUN)")
  add_common_args(ap, device="cpu")
  args = ap.parse_args(argv)
  ec = EvalConfig(frames=args.frames, windows=args.windows, split=args.split, steps=args.steps, draws=args.draws,
                  temperature=args.temperature, ctx_noise_tau=args.ctx_noise)
  s = evaluate_run(args.run, args.data, ec, args.device, out_dir=args.out, weights=args.weights, vae_dir=args.vae,
                   cache=args.cache)
  emit_result({k: v for k, v in s.items() if not isinstance(v, list)})


if __name__ == "__main__":
  raise SystemExit(main())
