"""Vectorised CPU renderer of the procedural world: camera intrinsics + 6-DOF pose -> RGB (or NV12).

Per frame (no per-pixel Python loops):
  1. rays of a coarse pixel grid (every `coarse`-th pixel) are rotated into the world (NED) frame;
  2. ray/ground intersection by Newton steps on f(t) = o_z + t r_z + h(x(t)) using the road's
     (h, grad h) lookup raster (ground = z = -h);
  3. the hit points are looked up in the road's world -> (s, d) raster (bilinear, exact to ~mm);
  4. (s, d) -> texel coordinates of a road texture that is periodic in s (P metres) and spans the road
     and its surroundings in d; the coordinate maps are upscaled to full resolution with cv2.resize and
     the colour fetched with one cv2.remap per mip band (rows grouped by the ground footprint so distant
     dashes do not alias);
  5. sky / distant tree line / fog / sun glare are blended in, roadside objects and cars are drawn as
     projected polygons sorted far -> near, then camera blur and sensor noise.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from common.transformations.camera import CameraConfig, device_frame_from_view_frame, project
from common.transformations.orientation import euler2rot
from tools.sim.road import GRID_RES, Road

TEX_PERIOD = 48.0     # m: the road texture repeats along s (a multiple of the 12 m dash period)
TEX_DS = 0.05         # m per texel along s
TEX_DD = 0.025        # m per texel across the road
TEX_MARGIN = 30.0     # m of terrain each side of the road edges inside the texture
DASH_ON, DASH_PERIOD = 3.0, 12.0   # m (US: 10 ft dashes, 40 ft cycle)
LINE_WIDTH = 0.13     # m
T_MAX = 700.0         # m: farther ground is treated as the horizon
# mip bands: (max ground footprint along s per pixel in m, blur along s in m, blur across in m)
MIP_LEVELS = ((0.12, 0.0, 0.0), (0.5, 0.35, 0.04), (2.0, 1.4, 0.08), (np.inf, 5.0, 0.16))


@dataclass
class Appearance:
  """Everything about how a seed's world looks (not where things are)."""
  asphalt: tuple          # RGB base
  asphalt_grain: float    # std of per-texel noise
  asphalt_blotch: float   # std of low-frequency patches
  shoulder_tint: float    # brightness factor of the paved shoulder
  grass: tuple
  curb: tuple
  white: tuple
  yellow: tuple
  marking_wear: float     # 0 = fresh, 0.7 = badly worn
  sky_top: tuple
  sky_horizon: tuple
  brightness: float       # global exposure factor (time of day)
  sun_az: float           # rad, NED azimuth of the sun
  sun_el: float           # rad, elevation
  glare: float            # 0..1 strength of the sun glare
  fog_dist: float         # m: e-folding distance of haze
  noise_sigma: float      # sensor noise std in 8-bit levels
  blur_sigma: float       # px at 1164 px width (scaled with the image)
  treeline: tuple         # RGB of the distant tree line / hills


def random_appearance(seed: int) -> Appearance:
  rng = np.random.default_rng([seed, 202])
  tod = rng.uniform(0, 1)            # 0 = dusk, 1 = noon
  brightness = 0.55 + 0.55 * tod
  g = rng.uniform(55, 115)
  asphalt = np.clip(np.array([g, g, g]) * rng.uniform(0.92, 1.08, 3), 0, 255)
  grass = np.array([rng.uniform(60, 120), rng.uniform(95, 140), rng.uniform(40, 70)])
  if rng.random() < 0.3:             # dry grass
    grass = np.array([rng.uniform(130, 170), rng.uniform(120, 150), rng.uniform(70, 95)])
  sky_top = np.array([rng.uniform(40, 110), rng.uniform(90, 150), rng.uniform(170, 235)])
  sky_hor = np.array([rng.uniform(170, 225), rng.uniform(185, 230), rng.uniform(200, 240)])
  if tod < 0.25:                     # dusk: warm horizon
    sky_hor = np.array([rng.uniform(200, 240), rng.uniform(140, 180), rng.uniform(100, 150)])
  t = lambda a: tuple(float(v) for v in a)
  return Appearance(
    asphalt=t(asphalt), asphalt_grain=float(rng.uniform(4, 14)), asphalt_blotch=float(rng.uniform(3, 12)),
    shoulder_tint=float(rng.uniform(0.9, 1.15)), grass=t(grass), curb=t([rng.uniform(160, 200)] * 3),
    white=t([rng.uniform(215, 250)] * 3), yellow=t([rng.uniform(200, 240), rng.uniform(160, 200), rng.uniform(20, 60)]),
    marking_wear=float(rng.uniform(0.0, 0.7)), sky_top=t(sky_top), sky_horizon=t(sky_hor), brightness=float(brightness),
    sun_az=float(rng.uniform(-np.pi, np.pi)), sun_el=float(np.radians(rng.uniform(3, 45) if tod > 0.25 else rng.uniform(1, 8))),
    glare=float(rng.uniform(0.0, 0.6)), fog_dist=float(rng.uniform(350, 1500)), noise_sigma=float(rng.uniform(1.0, 5.0)),
    blur_sigma=float(rng.uniform(0.3, 1.3)),
    treeline=t(np.array([rng.uniform(50, 90), rng.uniform(70, 110), rng.uniform(60, 100)])))


def _periodic_noise(rng, rows: int, cols: int, cell: int) -> np.ndarray:
  """Smooth noise (rows, cols), periodic along rows, with features ~cell texels."""
  small = rng.standard_normal((max(rows // cell, 2), max(cols // cell, 2))).astype(np.float32)
  tiled = np.concatenate([small, small, small], 0)
  big = cv2.resize(tiled, (cols, rows * 3), interpolation=cv2.INTER_CUBIC)
  return big[rows:2 * rows]


def _columns(mask: np.ndarray) -> slice:
  """The contiguous run of True in a 1-D mask over the texture's columns, as a slice (empty if none)."""
  idx = np.flatnonzero(mask)
  if idx.size and idx[-1] - idx[0] + 1 != idx.size:
    raise ValueError("a road texture band must be one run of columns")
  return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


def build_road_texture(road: Road, app: Appearance, seed: int) -> tuple[list[np.ndarray], float]:
  """Top-down texture of the road cross-section, periodic in s: returns (mip levels (Ns, Nd, 3) uint8,
  d of column 0)."""
  rng = np.random.default_rng([seed, 303])
  el, er = road.edge_d
  d0, d1 = el - TEX_MARGIN, er + TEX_MARGIN
  ns, nd = int(round(TEX_PERIOD / TEX_DS)), int(round((d1 - d0) / TEX_DD))
  s = (np.arange(ns) + 0.5) * TEX_DS
  d = d0 + (np.arange(nd) + 0.5) * TEX_DD
  S = s[:, None]
  tex = np.zeros((ns, nd, 3), np.float32)
  # terrain
  grass = np.array(app.grass, np.float32)
  gn = _periodic_noise(rng, ns, nd, 40) * 0.12 + _periodic_noise(rng, ns, nd, 6) * 0.08
  tex[:] = grass * (1 + gn[..., None])
  # pavement (lanes + shoulders), curbs and markings each cover a band of columns (they depend on d only): each is
  # computed and blended on its band alone, which is what keeps this function cheap (the values are those of a
  # blend over the whole texture: outside a band the blend leaves a texel as it is)
  paved = (d >= el) & (d <= er)
  asphalt = np.array(app.asphalt, np.float32)
  an = (rng.standard_normal((ns, nd)).astype(np.float32) * app.asphalt_grain
        + _periodic_noise(rng, ns, nd, 60) * app.asphalt_blotch)
  lanes = (d >= -road.half_width) & (d <= road.half_width)
  tint = np.where(lanes, 1.0, app.shoulder_tint).astype(np.float32)
  # darker tyre tracks in every lane
  lane_pos = np.mod(d + road.half_width, road.lane_width) - road.lane_width / 2
  tracks = 1.0 - 0.07 * (np.exp(-((np.abs(lane_pos) - 0.8) / 0.35) ** 2)) * lanes
  tex = tex.astype(np.float64)
  band = _columns(paved)
  tex[:, band] = asphalt * (tint[band] * tracks[band])[None, :, None] + an[:, band, None]
  # curbs
  curb = np.array(app.curb, np.float32)
  for has, e, sgn in ((road.curb_left, el, -1), (road.curb_right, er, 1)):
    if has:
      band = _columns((sgn * (d - e) >= 0) & (sgn * (d - e) <= 0.25))
      tex[:, band] = curb + an[:, band, None] * 0.5
  # markings with wear
  # worn paint: where the smooth noise falls below a threshold only a faded trace is left
  # (marking_wear 0 -> intact lines, 0.7 -> roughly a third of the paint gone)
  wear = _periodic_noise(rng, ns, nd, 8)
  wear = (wear - wear.mean()) / (wear.std() + 1e-6) + 0.4 * rng.standard_normal((ns, nd)).astype(np.float32)
  keep = np.where(wear > -3.0 + 3.6 * app.marking_wear, 1.0, 0.15).astype(np.float32)
  phase = rng.uniform(0, DASH_PERIOD)
  for k in range(road.n_lanes + 1):
    ld = float(road.line_d(k))
    a = np.clip((LINE_WIDTH / 2 - np.abs(d - ld)) / TEX_DD + 0.5, 0, 1)   # anti-aliased stripe
    band = _columns(a > 0)
    a = np.broadcast_to(a[band], (ns, a[band].size))
    if 0 < k < road.n_lanes:
      a = a * (np.mod(S + phase, DASH_PERIOD) < DASH_ON)
    color = np.array(app.yellow if (k == 0 and road.left_line_yellow) else app.white, np.float32)
    a = (a * keep[:, band])[..., None]
    tex[:, band] = tex[:, band] * (1 - a) + color * a
  tex *= app.brightness
  levels = []
  for (_, blur_s, blur_d) in MIP_LEVELS:
    t = tex
    if blur_s > 0:
      ks, kd = max(int(blur_s / TEX_DS) | 1, 1), max(int(blur_d / TEX_DD) | 1, 1)
      pad = ks
      t = np.concatenate([tex[-pad:], tex, tex[:pad]], 0)
      t = cv2.blur(t, (kd, ks))[pad:pad + ns]
    levels.append(np.clip(t, 0, 255).astype(np.uint8))
  return levels, d0


def rgb_to_nv12(rgb: np.ndarray) -> np.ndarray:
  """(H, W, 3) RGB uint8 -> NV12 bytes as a (H*3/2, W) uint8 array (Y plane, then interleaved UV)."""
  h, w = rgb.shape[:2]
  if h % 2 or w % 2:
    raise ValueError(f"rgb_to_nv12: width and height must be even, got {w}x{h}")
  i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)       # Y (h,w), U (h/4 rows of w), V (h/4 rows of w)
  out = np.empty((h * 3 // 2, w), np.uint8)
  out[:h] = i420[:h]
  u = i420[h:h + h // 4].reshape(-1)
  v = i420[h + h // 4:].reshape(-1)
  uv = out[h:].reshape(-1)
  uv[0::2], uv[1::2] = u, v
  return out


def nv12_to_rgb(nv12: np.ndarray, width: int, height: int) -> np.ndarray:
  return cv2.cvtColor(np.asarray(nv12, np.uint8).reshape(height * 3 // 2, width), cv2.COLOR_YUV2RGB_NV12)


def _bilinear(grid_flat: np.ndarray, shape: tuple, origin: np.ndarray, xy: np.ndarray) -> np.ndarray:
  """Sample an (H*W, C) flattened world raster at (N, 2) world (north, east) points, bilinear, edge-clamped.
  (cv2.remap quantises coordinates to 1/32 cell = 3 cm, too coarse for lane lines, hence numpy.)"""
  H, W = shape
  fr = np.clip((xy[:, 0] - origin[0]) * (1.0 / GRID_RES), 0, H - 1.001)
  fc = np.clip((xy[:, 1] - origin[1]) * (1.0 / GRID_RES), 0, W - 1.001)
  r0, c0 = fr.astype(np.int32), fc.astype(np.int32)
  wr, wc = (fr - r0).astype(np.float32)[:, None], (fc - c0).astype(np.float32)[:, None]
  i = r0 * W + c0
  top = grid_flat[i] * (1 - wc) + grid_flat[i + 1] * wc
  bot = grid_flat[i + W] * (1 - wc) + grid_flat[i + W + 1] * wc
  return top * (1 - wr) + bot * wr


@dataclass
class CarBox:
  """A vehicle to draw: centre of its footprint in the world (NED, on the ground), yaw, size, colour."""
  center: np.ndarray
  yaw: float
  length: float = 4.6
  width: float = 1.85
  height: float = 1.5
  color: tuple = (180, 30, 30)


def _object_polygons(road: Road) -> tuple[list, list]:
  """Static world-space polygons of the roadside objects: (per object: list of (k, 3) vertex arrays),
  (per object: list of RGB colours). Billboards stand across the road direction at their s."""
  polys, colors = [], []
  up = np.array([0.0, 0.0, -1.0])
  if not road.objects:
    return polys, colors
  ss = np.array([ob.s for ob in road.objects]); dd = np.array([ob.d for ob in road.objects])
  base = road.frenet_to_world(ss, dd)
  psi = road.psi_at(ss)
  for ob, b, ps in zip(road.objects, base, psi):
    right = np.array([-np.sin(ps), np.cos(ps), 0.0])
    quad = lambda w0, w1, h0, h1: np.array([b + right * w0 + up * h0, b + right * w1 + up * h0,
                                            b + right * w1 + up * h1, b + right * w0 + up * h1])
    P, C = [], []
    if ob.kind == "pole":
      w = ob.width / 2
      side = -np.sign(ob.d)
      P += [quad(-w, w, 0, ob.height), quad(0, side * 2.0, ob.height - 0.15, ob.height)]
      C += [ob.color, ob.color]
    elif ob.kind == "post":
      w = ob.width / 2
      P += [quad(-w, w, 0, ob.height), quad(-w, w, 0.8, 0.95)]
      C += [ob.color, ob.color2]
    elif ob.kind == "tree":
      tw, trunk_h = 0.15 + ob.width * 0.04, ob.height * 0.35
      ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
      c = b + up * (trunk_h + (ob.height - trunk_h) / 2)
      crown = c + np.outer(np.cos(ang) * ob.width / 2, right) + np.outer(np.sin(ang) * (ob.height - trunk_h) / 2, up)
      P += [quad(-tw, tw, 0, trunk_h), crown]
      C += [ob.color, ob.color2]
    elif ob.kind == "sign":
      P += [quad(-0.06, 0.06, 0, ob.height), quad(-ob.width / 2, ob.width / 2, ob.height, ob.height + ob.width * 0.6)]
      C += [ob.color, ob.color2]
    polys.append(P); colors.append(C)
  return polys, colors


class Renderer:
  def __init__(self, road: Road, app: Appearance, cam: CameraConfig, seed: int = 0, coarse: int | None = None,
               noise: bool = True):
    self.road, self.app, self.cam = road, app, cam
    self.W, self.H = cam.width, cam.height
    self.coarse = coarse or max(2, int(round(self.W / 240)))
    self.K = cam.intrinsics
    self.tex_levels, self.tex_d0 = build_road_texture(road, app, seed)
    self.grid_sd = road.grid.reshape(-1, 2)
    self.grid_shape = road.grid.shape[:2]
    self.rng = np.random.default_rng([seed, 404])
    f = self.coarse
    cw, ch = -(-self.W // f), -(-self.H // f)
    self.cw, self.ch = cw, ch
    # coarse sample j sits where cv2.resize (INTER_LINEAR) reads it when upscaling cw -> W
    u = (np.arange(cw) + 0.5) * (self.W / cw) - 0.5
    v = (np.arange(ch) + 0.5) * (self.H / ch) - 0.5
    uu, vv = np.meshgrid(u, v)
    rays_view = np.stack([uu, vv, np.ones_like(uu)], -1) @ np.linalg.inv(self.K).T
    rays_dev = rays_view @ device_frame_from_view_frame.T
    self.rays_dev = (rays_dev / np.linalg.norm(rays_dev, axis=-1, keepdims=True)).reshape(-1, 3)
    # tree line: elevation angle (rad) of distant hills/trees as a function of azimuth (periodic)
    az = np.linspace(-np.pi, np.pi, 1024, endpoint=False)
    tl = np.zeros_like(az)
    for k in (3, 7, 17, 41, 97, 203):
      tl += self.rng.uniform(0.2, 1.0) / k ** 0.5 * np.sin(k * az + self.rng.uniform(0, 2 * np.pi))
    self.treeline = 0.004 + 0.02 * (tl - tl.min()) / (np.ptp(tl) + 1e-9)
    self.noise = noise and app.noise_sigma > 0
    if self.noise:
      n = self.rng.standard_normal((self.H + 64, self.W, 3)) * app.noise_sigma
      self.noise_pos = np.clip(n, 0, 255).astype(np.uint8)
      self.noise_neg = np.clip(-n, 0, 255).astype(np.uint8)
    self.blur = app.blur_sigma * self.W / 1164.0
    self.sun_dir = np.array([np.cos(app.sun_el) * np.cos(app.sun_az), np.cos(app.sun_el) * np.sin(app.sun_az),
                             -np.sin(app.sun_el)])
    self.fog_color = np.array(app.sky_horizon) * app.brightness
    # static objects flattened and sorted by s: vertices (V, 3), polygon -> vertex ranges, object -> polygons
    polys, colors = _object_polygons(road)
    order = np.argsort([ob.s for ob in road.objects]) if road.objects else np.zeros(0, int)
    self.obj_s = np.array([road.objects[i].s for i in order])
    self.obj_base = (road.frenet_to_world(self.obj_s, np.array([road.objects[i].d for i in order])) if len(order)
                     else np.zeros((0, 3)))
    verts, pstart, pcol, ofirst = [], [0], [], [0]
    for i in order:
      for P, C in zip(polys[i], colors[i]):
        verts.append(P); pstart.append(pstart[-1] + len(P)); pcol.append(C)
      ofirst.append(len(pcol))
    self.obj_verts = np.concatenate(verts) if verts else np.zeros((0, 3))
    self.poly_start = np.array(pstart)
    self.poly_color = np.array(pcol, np.float64).reshape(-1, 3)
    self.obj_first_poly = np.array(ofirst)

  def _fog_colors(self, colors: np.ndarray, dist: np.ndarray) -> np.ndarray:
    a = (1 - np.exp(-np.asarray(dist) / self.app.fog_dist))[..., None]
    return np.clip(colors * self.app.brightness * (1 - a) + self.fog_color * a, 0, 255)

  # ------------------------------------------------------------------
  def render(self, pose6, cars: list[CarBox] = ()) -> np.ndarray:
    """pose6 = (x, y, z, roll, pitch, yaw) of the camera (device frame) in the world (NED).
    Returns (H, W, 3) RGB uint8."""
    pose6 = np.asarray(pose6, dtype=np.float64)
    if pose6.shape != (6,) or not np.all(np.isfinite(pose6)):
      raise ValueError(f"Renderer.render: pose6 must be 6 finite numbers, got {pose6}")
    o, R = pose6[:3], euler2rot(pose6[3:])
    road, f, app = self.road, self.coarse, self.app
    r = (self.rays_dev @ R.T).astype(np.float32)                # (N, 3) world directions
    # --- ray / ground intersection: Newton on f(t) = o_z + t r_z + h(o + t r) ---
    # (h, grad h) via cv2.remap: its 3 cm coordinate quantisation is < 1 mm of height on a 4 % grade
    h0 = float(_bilinear(road.grid_hg.reshape(-1, 3), self.grid_shape, road.grid_origin, o[None, :2])[0, 0])
    rz = r[:, 2]
    down = rz > 1e-4
    t = np.where(down, (-h0 - o[2]) / np.where(down, rz, 1.0), T_MAX).astype(np.float32)
    valid = np.ones(len(r), bool)
    on, oe = (o[0] - road.grid_origin[0]) / GRID_RES, (o[1] - road.grid_origin[1]) / GRID_RES
    for _ in range(2):
      t = np.clip(t, 0.3, T_MAX * 1.5)
      mx = (oe + t * (r[:, 1] / GRID_RES)).reshape(self.ch, self.cw)
      my = (on + t * (r[:, 0] / GRID_RES)).reshape(self.ch, self.cw)
      hg = cv2.remap(road.grid_hg, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).reshape(-1, 3)
      fval = o[2] + t * rz + hg[:, 0]
      df = rz + hg[:, 1] * r[:, 0] + hg[:, 2] * r[:, 1]
      ok = df > 1e-4
      valid &= ok
      t = t - fval / np.where(ok, df, 1.0)
    valid &= (t > 0.3) & (t < T_MAX)
    t = np.where(valid, t, T_MAX)
    sd = _bilinear(self.grid_sd, self.grid_shape, road.grid_origin, o[:2] + t[:, None].astype(np.float64) * r[:, :2])
    s_base = np.floor(sd[valid, 0].min() / TEX_PERIOD) * TEX_PERIOD if valid.any() else 0.0
    tex_row = ((sd[:, 0] - s_base) * (1 / TEX_DS) - 0.5).reshape(self.ch, self.cw).astype(np.float32)
    tex_col = np.clip((sd[:, 1] - self.tex_d0) * (1 / TEX_DD) - 0.5, 0, self.tex_levels[0].shape[1] - 1)
    tex_col = tex_col.reshape(self.ch, self.cw).astype(np.float32)
    # --- background: sky gradient, distant tree line, sun glare; far ground fades into haze ---
    el = -rz                                                    # sin(elevation) ~ elevation
    a = np.clip(el / 0.6, 0, 1)[:, None]
    sky = np.array(app.sky_horizon, np.float32) * (1 - a) + np.array(app.sky_top, np.float32) * a
    near_h = np.abs(el) < 0.03
    if near_h.any():
      az = np.arctan2(r[near_h, 1], r[near_h, 0])
      tl = self.treeline[((az + np.pi) * (1024 / (2 * np.pi))).astype(np.int64) % 1024]
      sub = sky[near_h]
      sub[el[near_h] < tl] = app.treeline
      sky[near_h] = sub
    sky = sky * app.brightness + (app.glare * 255 * np.clip(r @ self.sun_dir.astype(np.float32), 0, 1) ** 60)[:, None]
    bg = np.where(valid[:, None], self.fog_color.astype(np.float32), sky)
    bg = np.clip(bg, 0, 255).astype(np.uint8).reshape(self.ch, self.cw, 3)
    ground_w = np.where(valid, np.exp(-t / app.fog_dist), 0.0).reshape(self.ch, self.cw).astype(np.float32)
    # --- mip band per row from the ground footprint along s (m per full-res pixel) ---
    vrow = valid.reshape(self.ch, self.cw)
    ds = np.abs(np.diff(tex_row, axis=0, prepend=tex_row[:1])) * (TEX_DS / f)
    ds[0] = ds[1] if self.ch > 1 else 0
    cnt = vrow.sum(1)
    foot = (ds * vrow).sum(1) / np.maximum(cnt, 1)
    lvl_coarse = np.searchsorted(np.array([m[0] for m in MIP_LEVELS[:-1]]), foot)
    lvl_coarse[cnt == 0] = -1                                   # no ground in this row
    lvl = np.repeat(lvl_coarse, f)[:self.H]
    # --- upscale maps, fetch texture, blend ---
    full = (self.W, self.H)
    if f > 1:
      row_m = cv2.resize(tex_row, full, interpolation=cv2.INTER_LINEAR)
      col_m = cv2.resize(tex_col, full, interpolation=cv2.INTER_LINEAR)
      gw = cv2.resize(ground_w, full, interpolation=cv2.INTER_LINEAR)
      bg = cv2.resize(bg, full, interpolation=cv2.INTER_LINEAR)
    else:
      row_m, col_m, gw = tex_row, tex_col, ground_w
    img = np.zeros((self.H, self.W, 3), np.uint8)
    edges = np.flatnonzero(np.diff(lvl)) + 1
    for a0, a1 in zip(np.concatenate([[0], edges]), np.concatenate([edges, [self.H]])):
      L = lvl[a0]
      if L >= 0:
        img[a0:a1] = cv2.remap(self.tex_levels[L], col_m[a0:a1], row_m[a0:a1], cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_WRAP)
    img = cv2.blendLinear(img, bg, gw, 1 - gw)
    # --- objects and cars ---
    cam_s = float(sd[np.argmin(t), 0]) if valid.any() else 0.0
    self._draw_objects(img, o, R, cam_s, cars)
    # --- camera: blur + noise ---
    if self.blur > 0.25:
      img = cv2.GaussianBlur(img, (0, 0), self.blur)
    if self.noise:
      k = int(self.rng.integers(0, 64))
      img = cv2.add(img, self.noise_pos[k:k + self.H])
      img = cv2.subtract(img, self.noise_neg[k:k + self.H])
    return img

  def render_nv12(self, pose6, cars: list[CarBox] = ()) -> np.ndarray:
    return rgb_to_nv12(self.render(pose6, cars))

  # ------------------------------------------------------------------
  def _draw_objects(self, img, o, R, cam_s, cars) -> None:
    """Painter's algorithm over roadside objects and cars, far -> near: all vertices are projected in one
    batch, culled per polygon with reduceat, and only the survivors reach cv2.fillConvexPoly."""
    verts, starts, cols, dist, order = [], [], [], [], []
    nv = 0
    i0, i1 = np.searchsorted(self.obj_s, [cam_s - 10, cam_s + 400])
    if i1 > i0:
      p0, p1 = self.obj_first_poly[i0], self.obj_first_poly[i1]
      v0, v1 = self.poly_start[p0], self.poly_start[p1]
      verts.append(self.obj_verts[v0:v1]); starts.append(self.poly_start[p0:p1] - v0); nv = v1 - v0
      d_obj = np.hypot(*((self.obj_base[i0:i1, :2] - o[:2]).T))
      n_per = np.diff(self.obj_first_poly[i0:i1 + 1])
      d_poly = np.repeat(d_obj, n_per)
      cols.append(self._fog_colors(self.poly_color[p0:p1], d_poly)); dist.append(d_poly)
      order.append(np.arange(p1 - p0) - np.repeat(self.obj_first_poly[i0:i1] - p0, n_per))
    for car in cars:
      d = float(np.hypot(*(np.asarray(car.center)[:2] - o[:2])))
      if d < 500:
        q, c, k = self._car_quads(car, o)
        verts.append(q.reshape(-1, 3)); starts.append(nv + 4 * np.arange(len(q))); nv += 4 * len(q)
        cols.append(self._fog_colors(c, np.full(len(q), d))); dist.append(np.full(len(q), d)); order.append(k)
    if not verts:
      return
    V, S = np.concatenate(verts), np.concatenate(starts)
    C, D, K = np.concatenate(cols), np.concatenate(dist), np.concatenate(order)
    dev = (V - o) @ R
    uv = project(dev, self.K)
    front = np.minimum.reduceat(dev[:, 0], S) > 0.5
    with np.errstate(invalid="ignore"):
      umin, umax = np.minimum.reduceat(uv[:, 0], S), np.maximum.reduceat(uv[:, 0], S)
      vmin, vmax = np.minimum.reduceat(uv[:, 1], S), np.maximum.reduceat(uv[:, 1], S)
    ok = front & (umax >= 0) & (umin <= self.W) & (vmax >= 0) & (vmin <= self.H) & (np.abs(uv).max(1)[S] < 1e5)
    ok &= np.maximum.reduceat(np.abs(np.nan_to_num(uv, nan=1e9)).max(1), S) < 1e5
    ok &= (umax - umin) * (vmax - vmin) > 0.05                        # sub-pixel polygons: nothing to draw
    ends = np.append(S[1:], len(V))
    pix = np.round(np.nan_to_num(uv) * 16).astype(np.int32)
    colors = C.tolist()
    order = np.lexsort((K, -D))                                 # far -> near; inside an item, in its own order
    for j in order[ok[order]]:
      cv2.fillConvexPoly(img, pix[S[j]:ends[j]], colors[j], cv2.LINE_AA, 4)

  # car model: quads in (a, b, h) = (forward / half length, right / half width, height m; h < 0: fraction of
  # the car height), outward normals in (forward, right, up) (zero = always drawn), colour = a factor of the
  # body colour or a fixed RGB, and a draw-order key (0 shadow, 1 wheels, 2 body, 3 glass/roof, 4 lights)
  _CAR_MODEL = None

  @classmethod
  def _car_model(cls):
    if cls._CAR_MODEL is not None:
      return cls._CAR_MODEL
    h0, h1, H = 0.25, -0.75, -1.0
    glass = (40, 45, 55)
    parts = [([(-1.05, -1.05, 0.02), (1.05, -1.05, 0.02), (1.05, 1.05, 0.02), (-1.05, 1.05, 0.02)], (0, 0, 0), (20, 20, 22), 0)]
    for a in (-0.65, 0.65):
      for b in (-1, 1):
        parts.append(([(a - 0.15, b, 0.0), (a + 0.15, b, 0.0), (a + 0.15, b, 0.45), (a - 0.15, b, 0.45)],
                      (0, 0, 0), (15, 15, 15), 1))
    parts += [
      ([(-1, -1, h0), (-1, 1, h0), (-1, 1, h1), (-1, -1, h1)], (-1, 0, 0), 0.8, 2),          # rear
      ([(1, -1, h0), (1, 1, h0), (1, 1, h1), (1, -1, h1)], (1, 0, 0), 0.85, 2),              # front
      ([(-1, -1, h0), (1, -1, h0), (1, -1, h1), (-1, -1, h1)], (0, -1, 0), 0.65, 2),         # left side
      ([(-1, 1, h0), (1, 1, h0), (1, 1, h1), (-1, 1, h1)], (0, 1, 0), 0.65, 2),              # right side
      ([(-0.7, -0.9, H), (0.5, -0.9, H), (0.5, 0.9, H), (-0.7, 0.9, H)], (0, 0, 1), 1.1, 3),  # roof
      ([(-1, -0.95, h1), (-1, 0.95, h1), (-0.7, 0.9, H), (-0.7, -0.9, H)], (-1, 0, 1), glass, 3),
      ([(1, -0.95, h1), (1, 0.95, h1), (0.5, 0.9, H), (0.5, -0.9, H)], (1, 0, 1), glass, 3),
      ([(-0.7, -1, h1), (0.5, -1, h1), (0.5, -0.9, H), (-0.7, -0.9, H)], (0, -1, 0), glass, 3),
      ([(-0.7, 1, h1), (0.5, 1, h1), (0.5, 0.9, H), (-0.7, 0.9, H)], (0, 1, 0), glass, 3),
    ]
    for b in (-1, 1):   # tail lights on the rear face
      parts.append(([(-1.01, b * 0.95, -0.5), (-1.01, b * 0.65, -0.5), (-1.01, b * 0.65, -0.62), (-1.01, b * 0.95, -0.62)],
                    (-1, 0, 0), (200, 20, 20), 4))
    quads = np.array([p[0] for p in parts], np.float64)                         # (Q, 4, 3)
    normals = np.array([p[1] for p in parts], np.float64)                       # (Q, 3)
    body_f = np.array([p[2] if np.isscalar(p[2]) else 0.0 for p in parts])      # (Q,)
    fixed = np.array([(0, 0, 0) if np.isscalar(p[2]) else p[2] for p in parts], np.float64)
    keys = np.array([p[3] for p in parts])
    cls._CAR_MODEL = (quads, normals, body_f, fixed, keys)
    return cls._CAR_MODEL

  def _car_quads(self, car: CarBox, o) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World quads (Q, 4, 3) of the visible parts of a car, their colours (Q, 3) and draw-order keys (Q,)."""
    Q, normals, body_f, fixed, K = self._car_model()
    c, s = np.cos(car.yaw), np.sin(car.yaw)
    basis = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, -1.0]])           # rows: forward, right, up (NED)
    h = np.where(Q[..., 2] < 0, -Q[..., 2] * car.height, Q[..., 2])
    local = np.stack([Q[..., 0] * (car.length / 2), Q[..., 1] * (car.width / 2), h], -1)   # (Q, 4, 3)
    world = np.asarray(car.center, np.float64) + local @ basis                            # (Q, 4, 3)
    to_cam = o - world.mean(1)
    always = ~normals.any(1)
    visible = always | (np.einsum("qi,qi->q", normals @ basis, to_cam) > 0)   # back-face culling
    cols = np.clip(fixed + body_f[:, None] * np.asarray(car.color, np.float64), 0, 255)
    dcam = np.linalg.norm(to_cam, axis=1)
    keys = K * 1000 + np.where(np.isin(K, (0, 1, 4)), 0.0, 999 - np.minimum(dcam, 999))
    return world[visible], cols[visible], keys[visible]
