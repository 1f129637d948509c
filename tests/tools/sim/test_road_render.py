"""Road world and renderer: determinism, Frenet round trips, rendering geometry checked against the
camera model, NV12, bad input."""
from dataclasses import replace

import numpy as np
import pytest

from common.transformations.camera import EON_ROAD_CAM, CameraConfig, model_frame_camera, project
from common.transformations.orientation import euler2rot
from tools.sim.render import (
  TEX_DD,
  CarBox,
  Renderer,
  _bilinear,
  _columns,
  build_road_texture,
  nv12_to_rgb,
  random_appearance,
  rgb_to_nv12,
)
from tools.sim.road import RoadConfig, generate_road


def _flat_straight(n_lanes=3, seed=0, flat=True):
  return generate_road(seed, RoadConfig(length=600.0, n_lanes=n_lanes, ego_lane=1, lane_width_fixed=3.6,
                                        curvature_profile=((0.0, 601.0, 0.0, 0.0),), flat=flat, objects=False))


def _clean_look(seed=0):
  return replace(random_appearance(seed), blur_sigma=0.0, noise_sigma=0.0, glare=0.0, marking_wear=0.0,
                 fog_dist=1e6, brightness=1.0, curb=(60.0, 60.0, 60.0), grass=(60.0, 120.0, 50.0))


def test_road_determinism_and_limits():
  a, b = generate_road(5, RoadConfig(length=1500.0)), generate_road(5, RoadConfig(length=1500.0))
  assert np.array_equal(a.xy, b.xy) and a.n_lanes == b.n_lanes and len(a.objects) == len(b.objects)
  c = generate_road(6, RoadConfig(length=1500.0))
  assert not np.allclose(a.xy[-1], c.xy[-1])
  for seed in range(6):
    r = generate_road(seed, RoadConfig(length=1500.0, objects=False))
    assert np.abs(r.kappa).max() <= 1 / 150 + 1e-12
    assert 1 <= r.n_lanes <= 4 and 3.3 <= r.lane_width <= 3.9
    assert np.abs(r.grade).max() <= 0.04 + 1e-9
    # heading is the derivative of position
    dxy = np.diff(r.xy, axis=0)
    psi_mid = np.arctan2(dxy[:, 1], dxy[:, 0])
    assert np.allclose(np.unwrap(psi_mid), 0.5 * (r.psi[1:] + r.psi[:-1]), atol=1e-6)
  # at least one seed has curves as sharp as the brief asks (1/150 m)
  assert max(np.abs(generate_road(s, RoadConfig(length=2500.0, objects=False)).kappa).max() for s in range(8)) > 1 / 160


def test_frenet_round_trip_and_lookup_grid():
  road = generate_road(3, RoadConfig(length=1500.0, objects=False))
  rng = np.random.default_rng(0)
  s = rng.uniform(50, 1400, 200); d = rng.uniform(-20, 20, 200)
  w = road.frenet_to_world(s, d)
  s2, d2 = road.world_to_frenet(w[:, :2])
  assert np.abs(s2 - s).max() < 5e-3 and np.abs(d2 - d).max() < 5e-3   # 0.5 m polyline: mm-level
  sd = _bilinear(road.grid.reshape(-1, 2), road.grid.shape[:2], road.grid_origin, w[:, :2])
  assert np.abs(sd[:, 1] - d).max() < 0.005                     # renderer lookup: lateral < 5 mm everywhere
  on_road = np.abs(d) < 8.0                                      # along the road < 1 cm on the pavement
  assert np.abs(sd[on_road, 0] - s[on_road]).max() < 0.01 and np.abs(sd[:, 0] - s).max() < 0.1


def test_bad_road_config_names_the_field():
  with pytest.raises(ValueError, match="n_lanes"):
    generate_road(0, RoadConfig(length=300.0, n_lanes=9))
  with pytest.raises(ValueError, match="ego_lane"):
    generate_road(0, RoadConfig(length=300.0, n_lanes=2, ego_lane=2))
  with pytest.raises(ValueError, match="length"):
    generate_road(0, RoadConfig(length=-1.0))
  with pytest.raises(ValueError, match="curvature_profile"):
    generate_road(0, RoadConfig(length=300.0, curvature_profile=((0.0, 301.0, 0.1, 0.1),)))


@pytest.mark.parametrize("flat", [True, False])
def test_lane_lines_render_where_the_camera_model_projects_them(flat):
  road = _flat_straight(seed=2, flat=flat)
  s0, h = 100.0, 1.22
  if not flat:   # a stretch where the grade changes: the road ahead is not the plane under the car
    s0 = float(road.s[np.argmax(np.abs(np.gradient(road.grade[200:800])))] + 100.0)
    assert np.abs(road.grade_at(s0 + 35) - road.grade_at(s0)) > 1e-3
  cam = CameraConfig(1164, 874, 910.0)
  r = Renderer(road, _clean_look(), cam, seed=0, noise=False)
  p = road.frenet_to_world(s0, road.lane_center_d(1))
  yaw = float(road.psi_at(s0))
  pose = np.array([p[0], p[1], p[2] - h, 0.0, float(np.arctan(road.grade_at(s0))), yaw])
  img = r.render(pose).astype(np.float64)
  R = euler2rot(pose[3:])
  checked = 0
  for k in (0, 3):                          # the solid left and right road lines (3 lanes of 3.6 m)
    for x in (12.0, 20.0, 35.0):
      # where the line crosses pixel row `row` according to the camera model (two points on the line)
      ends = road.frenet_to_world(np.array([s0 + x, s0 + x + 1.0]), np.full(2, road.line_d(k)))
      (u0, v0), (u1, v1) = project((ends - pose[:3]) @ R, cam.intrinsics)
      row = int(round(v0))
      u = u0 + (row - v0) * (u1 - u0) / (v1 - v0)
      v = row
      if not (30 < u < cam.width - 30):
        continue
      paint = np.array(r.app.yellow if (k == 0 and road.left_line_yellow) else r.app.white)
      lo = int(u) - 25
      seg = img[int(round(v)), lo:lo + 51]
      ground = np.median(seg, axis=0)
      cols = np.flatnonzero(np.linalg.norm(seg - paint, axis=-1) < 0.5 * np.linalg.norm(seg - ground, axis=-1))
      assert len(cols) >= 2, (k, x)                                   # pixels nearer the paint than the road
      found = lo + cols.mean()
      assert abs(found - u) < 1.0, (k, x, found, u)
      checked += 1
  assert checked >= 4
  if not flat:
    return
  # the horizon of a level camera is the principal row: sky above, ground below
  cy = int(cam.intrinsics[1, 2])
  sky = np.array(r.app.sky_horizon)
  assert np.abs(img[cy - 40, 10] - sky).max() < 60
  assert np.abs(img[cy + 40, cam.width // 2] - np.array(r.app.asphalt)).max() < 60


def test_lead_car_projects_where_expected_and_determinism():
  road = _flat_straight()
  look = _clean_look(2)
  cam = model_frame_camera(256, 128, 455.0)
  s0 = 100.0
  p = road.frenet_to_world(s0, road.lane_center_d(1))
  pose = np.array([p[0], p[1], p[2] - 1.22, 0.0, 0.0, float(road.psi_at(s0))])
  car = CarBox(center=road.frenet_to_world(s0 + 20.0, road.lane_center_d(1)), yaw=float(road.psi_at(s0)), color=(200, 20, 200))
  r = Renderer(road, look, cam, seed=2, noise=False)
  img = r.render(pose, [car])
  rear_mid = road.frenet_to_world(s0 + 20.0 - 2.3, road.lane_center_d(1)) + np.array([0, 0, -0.6])
  u, v = project(((rear_mid - pose[:3]) @ euler2rot(pose[3:]))[None], cam.intrinsics)[0]
  px = img[int(round(v)), int(round(u))].astype(float)
  assert np.abs(px - np.array([200, 20, 200]) * 0.8).max() < 25, px
  assert not np.array_equal(img, r.render(pose))        # the car changes the picture
  # same seed -> same frames (noise included); another seed -> another look
  a = Renderer(road, random_appearance(4), cam, seed=4).render(pose)
  b = Renderer(road, random_appearance(4), cam, seed=4).render(pose)
  c = Renderer(road, random_appearance(5), cam, seed=5).render(pose)
  assert np.array_equal(a, b) and np.abs(a.astype(int) - c).mean() > 5


def test_render_sizes_nv12_and_bad_pose():
  road = generate_road(1, RoadConfig(length=500.0))
  look = random_appearance(1)
  p = road.frenet_to_world(80.0, road.lane_center_d(road.ego_lane))
  pose = np.array([p[0], p[1], p[2] - 1.22, 0.0, 0.0, float(road.psi_at(80.0))])
  for cam in (EON_ROAD_CAM, model_frame_camera(512, 256, 910.0), model_frame_camera(256, 128, 455.0),
              model_frame_camera(128, 64, 227.5)):
    img = Renderer(road, look, cam, seed=1).render(pose)
    assert img.shape == (cam.height, cam.width, 3) and img.dtype == np.uint8 and img.std() > 10
  nv12 = rgb_to_nv12(img)
  assert nv12.shape == (96, 128)
  from cereal.visionipc import rgb_to_nv12 as cereal_nv12
  assert np.array_equal(nv12.reshape(-1), cereal_nv12(img))
  assert np.abs(nv12_to_rgb(nv12, 128, 64).astype(int) - img).mean() < 6
  r = Renderer(road, look, model_frame_camera(128, 64, 227.5), seed=1)
  with pytest.raises(ValueError, match="pose6"):
    r.render(np.array([0, 0, 0, 0, np.nan, 0.0]))
  with pytest.raises(ValueError, match="pose6"):
    r.render(np.zeros(5))
  with pytest.raises(ValueError, match="even"):
    rgb_to_nv12(np.zeros((5, 8, 3), np.uint8))


def test_road_texture_bands_terrain_pavement_curbs_and_lines():
  """The texture's columns across the road: terrain outside the edges, asphalt between them, the curb's colour just
  outside a curbed edge, paint on every line (solid outer lines, dashed inner ones); each band is blended on its own
  columns (_columns) and leaves the others as they were."""
  road = replace(_flat_straight(n_lanes=3), curb_left=True, curb_right=False)
  look = replace(_clean_look(), asphalt=(90.0, 90.0, 90.0), asphalt_grain=0.0, asphalt_blotch=0.0, shoulder_tint=1.0,
                 white=(250.0, 250.0, 250.0))
  levels, d0 = build_road_texture(road, look, seed=0)
  tex = levels[0].astype(np.float64)                              # (Ns, Nd, 3), finest level
  col = lambda d: int((d - d0) / TEX_DD)                            # noqa: E731
  el, er = road.edge_d
  assert np.allclose(tex[:, col(er + 5.0)].mean(0), look.grass, atol=25)           # terrain beyond the right edge
  assert np.allclose(tex[:, col(el - 0.12)].mean(0), look.curb, atol=25)            # the left curb
  assert np.allclose(tex[:, col(er + 0.12)].mean(0), look.grass, atol=25)          # no curb on the right
  mid_lane = tex[:, col(float(road.lane_center_d(1)))]                              # between the tyre tracks
  assert np.abs(mid_lane - 90.0).max() <= 2
  for k in range(road.n_lanes + 1):
    paint = tex[:, col(float(road.line_d(k)))].max(1)                               # white or yellow
    painted = (paint > 200).mean()
    assert painted > 0.95 if k in (0, road.n_lanes) else 0.15 < painted < 0.35     # solid, or 3 m of each 12 m
  assert _columns(np.array([False, True, True, False])) == slice(1, 3)
  assert _columns(np.zeros(4, bool)) == slice(0, 0)
  with pytest.raises(ValueError, match="one run of columns"):
    _columns(np.array([True, False, True]))
