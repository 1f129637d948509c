"""Procedural road: a centre line built from straights, clothoid transitions and arcs, lanes, markings,
shoulders, an elevation profile, roadside objects, and a fast world -> road (Frenet) lookup.

World frame of the simulator: local NED (x north, y east, z down, metres) about the segment's geodetic
origin. The road's yaw psi(s) is measured about z-down (positive = heading turns RIGHT), so with the
project convention (curvature positive = LEFT) d psi / d s = -curvature.

Frenet coordinates: s = distance along the road's reference line, d = signed lateral distance from it,
positive to the RIGHT (the direction (-sin psi, cos psi)). The reference line is the middle of the
paved lanes; lane i (0 = leftmost) has its centre at d = -n_lanes*w/2 + (i + 0.5)*w.

Ground height: h(s) (metres, up), so the ground is z = -h(s) in the world frame; the road has no bank.
"""
from dataclasses import dataclass, field

import cv2
import numpy as np

SAMPLE_DS = 0.5        # m between centre-line samples
GRID_RES = 1.0         # m per cell of the world -> (s, d) lookup grid
GRID_MARGIN = 120.0    # m of terrain around the road kept in the lookup grid


@dataclass
class RoadConfig:
  length: float = 2600.0                  # m of road generated
  max_curvature: float = 1.0 / 150.0      # 1/m, the sharpest arc (brief: at least 1/150 m)
  min_lanes: int = 1
  max_lanes: int = 4
  lane_width: tuple[float, float] = (3.3, 3.9)
  straight_len: tuple[float, float] = (60.0, 400.0)
  arc_len: tuple[float, float] = (60.0, 350.0)
  clothoid_len: tuple[float, float] = (30.0, 90.0)
  max_heading_dev: float = np.radians(75)  # keep the road from turning back on itself
  max_grade: float = 0.04                 # elevation slope bound (rise / run)
  object_spacing: tuple[float, float] = (12.0, 40.0)  # m between roadside objects on each side
  # forced layout (None = drawn from the seed); used by scenarios
  n_lanes: int | None = None
  ego_lane: int | None = None
  lane_width_fixed: float | None = None
  curvature_profile: tuple | None = None  # ((s_start, s_end, k_start, k_end), ...) piecewise-linear k(s)
  flat: bool = False
  objects: bool = True


@dataclass
class RoadObject:
  kind: str            # "pole" | "tree" | "sign" | "post"
  s: float
  d: float
  height: float        # m
  width: float         # m
  color: tuple         # RGB 0..255 (main)
  color2: tuple        # RGB (crown / panel)


@dataclass
class Road:
  cfg: RoadConfig
  s: np.ndarray            # (M,) sample arc length
  xy: np.ndarray           # (M, 2) centre-line position, NED north/east
  psi: np.ndarray          # (M,) yaw of the road (NED, + right)
  kappa: np.ndarray        # (M,) curvature, + left
  height: np.ndarray       # (M,) ground height (m, up)
  grade: np.ndarray        # (M,) dh/ds
  n_lanes: int
  lane_width: float
  shoulder_left: float
  shoulder_right: float
  curb_left: bool
  curb_right: bool
  left_line_yellow: bool
  ego_lane: int            # default lane the ego starts in
  objects: list = field(default_factory=list)
  grid: np.ndarray | None = None        # (H, W, 2) float32 (s, d) at cell centres
  grid_hg: np.ndarray | None = None     # (H, W, 3) float32 (h, dh/dx, dh/dy) in world (north, east)
  grid_origin: np.ndarray | None = None  # (2,) world xy of cell (0, 0)

  # ---------- lane geometry ----------
  @property
  def half_width(self) -> float:
    return self.n_lanes * self.lane_width / 2.0

  def lane_center_d(self, lane) -> np.ndarray:
    return -self.half_width + (np.asarray(lane, dtype=np.float64) + 0.5) * self.lane_width

  def line_d(self, k) -> np.ndarray:
    """d of lane boundary k (0 = left road line, n_lanes = right road line)."""
    return -self.half_width + np.asarray(k, dtype=np.float64) * self.lane_width

  @property
  def edge_d(self) -> tuple[float, float]:
    """d of the left and right road edges (outer edge of the paved shoulder; curb or grass beyond)."""
    return -self.half_width - self.shoulder_left, self.half_width + self.shoulder_right

  def lane_of(self, d) -> np.ndarray:
    return np.clip(np.floor((np.asarray(d) + self.half_width) / self.lane_width), 0, self.n_lanes - 1).astype(int)

  # ---------- along-road interpolation ----------
  def _interp(self, s, arr):
    return np.interp(s, self.s, arr)

  def psi_at(self, s):
    return self._interp(s, self.psi)

  def kappa_at(self, s):
    return self._interp(s, self.kappa)

  def height_at(self, s):
    return self._interp(s, self.height)

  def grade_at(self, s):
    return self._interp(s, self.grade)

  def frenet_to_world(self, s, d) -> np.ndarray:
    """(s, d) -> (..., 3) NED world points on the ground."""
    s, d = np.broadcast_arrays(np.asarray(s, dtype=np.float64), np.asarray(d, dtype=np.float64))
    x = self._interp(s, self.xy[:, 0]); y = self._interp(s, self.xy[:, 1]); psi = self.psi_at(s)
    return np.stack([x - np.sin(psi) * d, y + np.cos(psi) * d, -self.height_at(s)], axis=-1)

  def world_to_frenet(self, xy, s_guess: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact projection of (..., 2) world points on the reference line (nearest sample + tangent).
    With s_guess the search is limited to +-60 m around it (fast, and unambiguous near loops)."""
    xy = np.asarray(xy, dtype=np.float64)
    flat = xy.reshape(-1, 2)
    if s_guess is None:
      lo, hi = 0, len(self.s)
    else:
      hi = min(max(int((s_guess + 60.0) / SAMPLE_DS) + 1, 2), len(self.s))
      lo = min(max(int((s_guess - 60.0) / SAMPLE_DS), 0), hi - 2)
    seg = self.xy[lo:hi]
    d2 = ((flat[:, None, :] - seg[None]) ** 2).sum(-1)
    i = lo + np.argmin(d2, axis=1)
    t = np.stack([np.cos(self.psi[i]), np.sin(self.psi[i])], -1)
    ds = ((flat - self.xy[i]) * t).sum(-1)
    s = self.s[i] + ds
    # refine once at the projected s (removes the sample-spacing error)
    p = np.stack([self._interp(s, self.xy[:, 0]), self._interp(s, self.xy[:, 1])], -1)
    psi = self.psi_at(s)
    rel = flat - p
    s = s + (rel * np.stack([np.cos(psi), np.sin(psi)], -1)).sum(-1)
    d = (rel * np.stack([-np.sin(psi), np.cos(psi)], -1)).sum(-1)
    return s.reshape(xy.shape[:-1]), d.reshape(xy.shape[:-1])

  # ---------- fast lookup grid ----------
  def build_grid(self) -> None:
    """World -> (s, d, h, grad h) lookup raster: every cell takes the nearest centre-line sample
    (cv2.distanceTransformWithLabels) and projects on its tangent, so s and d are smooth across cells
    and bilinear lookups are exact to ~mm for curvature <= 1/150 m."""
    lo = self.xy.min(0) - GRID_MARGIN
    hi = self.xy.max(0) + GRID_MARGIN
    H, W = int(np.ceil((hi[0] - lo[0]) / GRID_RES)) + 1, int(np.ceil((hi[1] - lo[1]) / GRID_RES)) + 1
    if H * W > 40e6:
      raise ValueError(f"Road.build_grid: road spans {H}x{W} m, too large for the lookup grid")
    ij = np.round((self.xy - lo) / GRID_RES).astype(np.int64)          # (M, 2) row = north, col = east
    src = np.full((H, W), 255, np.uint8)
    src[ij[:, 0], ij[:, 1]] = 0
    _, labels = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    # label -> sample index: labels at the zero pixels themselves
    label_to_idx = np.zeros(labels.max() + 1, np.int64)
    label_to_idx[labels[ij[:, 0], ij[:, 1]]] = np.arange(len(self.s))
    idx = label_to_idx[labels]                                          # (H, W)
    north = lo[0] + np.arange(H)[:, None] * GRID_RES
    east = lo[1] + np.arange(W)[None, :] * GRID_RES
    psi = self.psi[idx]
    c, sn = np.cos(psi), np.sin(psi)
    rn, re = north - self.xy[idx, 0], east - self.xy[idx, 1]
    s = np.clip(self.s[idx] + rn * c + re * sn, self.s[0], self.s[-1])
    # one refinement at the projected s removes the sample-spacing error
    psi = np.interp(s, self.s, self.psi)
    c, sn = np.cos(psi), np.sin(psi)
    rn, re = north - np.interp(s, self.s, self.xy[:, 0]), east - np.interp(s, self.s, self.xy[:, 1])
    s = s + rn * c + re * sn
    d = -rn * sn + re * c
    s = np.clip(s, self.s[0], self.s[-1])
    h = np.interp(s, self.s, self.height)
    g = np.interp(s, self.s, self.grade)
    self.grid = np.stack([s, d], -1).astype(np.float32)
    self.grid_hg = np.stack([h, g * c, g * sn], -1).astype(np.float32)
    self.grid_origin = lo


def _piecewise_kappa(s: np.ndarray, profile) -> np.ndarray:
  k = np.zeros_like(s)
  for (s0, s1, k0, k1) in profile:
    m = (s >= s0) & (s < s1)
    k[m] = k0 + (k1 - k0) * (s[m] - s0) / max(s1 - s0, 1e-9)
  return k


def _random_kappa_profile(cfg: RoadConfig, rng: np.random.Generator) -> list:
  """Straight -> clothoid in -> arc -> clothoid out -> straight ...; the arc's sign is chosen to pull
  the heading back towards the start direction when it has drifted."""
  prof, s, heading = [], 0.0, 0.0
  s += rng.uniform(*cfg.straight_len) * 0.6
  prof.append((0.0, s, 0.0, 0.0))
  while s < cfg.length:
    k = rng.uniform(1.0 / 1500.0, cfg.max_curvature) * (1 if rng.random() < 0.5 else -1)
    if rng.random() < 0.25:
      k = np.sign(k) * rng.uniform(cfg.max_curvature * 0.7, cfg.max_curvature)
    lc = rng.uniform(*cfg.clothoid_len)
    la = rng.uniform(*cfg.arc_len)
    # heading change of the whole curve (psi decreases for left curvature)
    dpsi = -k * (la + lc)
    if abs(heading + dpsi) > cfg.max_heading_dev:
      k, dpsi = -k, -dpsi
      if abs(heading + dpsi) > cfg.max_heading_dev:   # still too much: shorten the arc
        la = max(cfg.max_heading_dev - abs(heading), 0.05) / abs(k) * 0.8
        dpsi = -k * (la + lc)
    heading += dpsi
    prof += [(s, s + lc, 0.0, k), (s + lc, s + lc + la, k, k), (s + lc + la, s + 2 * lc + la, k, 0.0)]
    s += 2 * lc + la
    ls = rng.uniform(*cfg.straight_len)
    prof.append((s, s + ls, 0.0, 0.0))
    s += ls
  return prof


def generate_road(seed: int, cfg: RoadConfig | None = None, scenery_seed: int | None = None) -> Road:
  """The road of `seed`. scenery_seed: draw the curbs, the left line's colour and the roadside objects from this seed
  instead (the geometry, shoulders included, stays that of `seed`); None = everything from `seed`."""
  cfg = cfg or RoadConfig()
  if cfg.length <= 0:
    raise ValueError(f"RoadConfig.length must be > 0, got {cfg.length}")
  rng = np.random.default_rng([seed, 101])
  s = np.arange(0.0, cfg.length + SAMPLE_DS, SAMPLE_DS)
  profile = cfg.curvature_profile if cfg.curvature_profile is not None else _random_kappa_profile(cfg, rng)
  kappa = _piecewise_kappa(s, profile)
  if np.max(np.abs(kappa)) > 1.0 / 50:
    raise ValueError("RoadConfig.curvature_profile: curvature above 1/50 m is not a road")
  # integrate heading and position (trapezoid on heading, midpoint on position)
  psi0 = rng.uniform(-np.pi, np.pi)
  psi = psi0 - np.concatenate([[0.0], np.cumsum(0.5 * (kappa[1:] + kappa[:-1]) * SAMPLE_DS)])
  psi_mid = 0.5 * (psi[1:] + psi[:-1])
  xy = np.zeros((len(s), 2))
  xy[1:, 0] = np.cumsum(np.cos(psi_mid) * SAMPLE_DS)
  xy[1:, 1] = np.cumsum(np.sin(psi_mid) * SAMPLE_DS)
  # elevation: a few long sines, each slope-limited so that the sum stays under max_grade
  height = np.zeros_like(s); grade = np.zeros_like(s)
  if not cfg.flat:
    for _ in range(3):
      L = rng.uniform(250.0, 1200.0)
      A = rng.uniform(0.2, 1.0) * cfg.max_grade / 3.0 * L / (2 * np.pi)
      ph = rng.uniform(0, 2 * np.pi)
      height += A * (np.sin(2 * np.pi * s / L + ph) - np.sin(ph))
      grade += A * 2 * np.pi / L * np.cos(2 * np.pi * s / L + ph)
  n_lanes = cfg.n_lanes if cfg.n_lanes is not None else int(rng.integers(cfg.min_lanes, cfg.max_lanes + 1))
  if not 1 <= n_lanes <= 6:
    raise ValueError(f"RoadConfig.n_lanes must be in 1..6, got {n_lanes}")
  lane_width = cfg.lane_width_fixed if cfg.lane_width_fixed is not None else float(rng.uniform(*cfg.lane_width))
  ego_lane = cfg.ego_lane if cfg.ego_lane is not None else int(rng.integers(0, n_lanes))
  if not 0 <= ego_lane < n_lanes:
    raise ValueError(f"RoadConfig.ego_lane {ego_lane} outside 0..{n_lanes - 1}")
  shoulder_left, shoulder_right = float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.5, 2.8))
  # scenery draws continue the same stream when there is no scenery seed (the roads of every existing seed)
  srng = rng if scenery_seed is None else np.random.default_rng([scenery_seed, 102])
  road = Road(cfg=cfg, s=s, xy=xy, psi=psi, kappa=kappa, height=height, grade=grade, n_lanes=n_lanes,
              lane_width=lane_width, shoulder_left=shoulder_left, shoulder_right=shoulder_right,
              curb_left=bool(srng.random() < 0.4), curb_right=bool(srng.random() < 0.4),
              left_line_yellow=bool(srng.random() < 0.5), ego_lane=ego_lane)
  if cfg.objects:
    road.objects = _roadside_objects(road, srng)
  road.build_grid()
  return road


def _roadside_objects(road: Road, rng: np.random.Generator) -> list:
  objs = []
  el, er = road.edge_d
  tree_green = np.array([40, 95, 40]) * rng.uniform(0.7, 1.3)
  for side, edge in ((-1, el), (1, er)):
    s = rng.uniform(0, 20)
    while s < road.s[-1]:
      r = rng.random()
      off = edge + side * rng.uniform(1.0, 3.0)
      if r < 0.35:
        objs.append(RoadObject("pole", s, off, rng.uniform(6, 10), 0.25, (150, 150, 145), (200, 200, 190)))
      elif r < 0.75:
        off = edge + side * rng.uniform(3.0, 14.0)
        crown = tuple(int(c) for c in np.clip(tree_green * rng.uniform(0.7, 1.3, 3), 0, 255))
        objs.append(RoadObject("tree", s, off, rng.uniform(5, 12), rng.uniform(2.5, 5.5), (90, 65, 40), crown))
      elif r < 0.9:
        panel = [(20, 110, 50), (230, 230, 230), (30, 60, 160), (220, 180, 20)][rng.integers(4)]
        objs.append(RoadObject("sign", s, off, rng.uniform(2.2, 3.5), rng.uniform(0.8, 2.5), (120, 120, 120), panel))
      else:
        objs.append(RoadObject("post", s, edge + side * 0.6, 1.0, 0.15, (235, 235, 235), (230, 60, 30)))
      s += rng.uniform(*road.cfg.object_spacing)
  return objs
