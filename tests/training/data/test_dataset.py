import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.poses import compose_transitions
from tests.training.segment_fixture import make_dataset, make_segment
from tools.lib.segment import SegmentError
from training.data.dataset import LOADER_START_METHOD, WindowConfig, WorldModelDataset
from training.data.frames import SegmentFrames
from training.data.latent_cache import build_latent_cache, load_latents, segment_store, store_root
from training.data.segments import find_segments, route_split, segment_camera
from training.vae import VAETrainConfig, images_to_tensor, make_autoencoder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("segments")
  segs = make_dataset(root, n_routes=3, n_frames=100)
  return root, segs


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
  torch.manual_seed(0)
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=8))
  d = tmp_path_factory.mktemp("vae")
  ae.save_pretrained(str(d))
  from training.vae import load_vae
  return load_vae(d)


def test_route_split_is_deterministic_and_per_route(data):
  root, segs = data
  assert route_split("abc|2020") == route_split("abc|2020")
  fracs = np.mean([route_split(f"r{i}|x") == "val" for i in range(2000)])
  assert 0.07 < fracs < 0.13
  tr, va = find_segments(root, "train"), find_segments(root, "val")
  assert len(tr) + len(va) == 3 and va and tr
  assert not {p.parent.name for p in tr} & {p.parent.name for p in va}
  # a second segment of a validation route lands in validation too
  extra = make_segment(root, va[0].parent.name, seg_num=1, n_frames=60, seed=9)
  try:
    assert extra in find_segments(root, "val")
  finally:
    import shutil
    shutil.rmtree(extra)


def test_window_geometry(data):
  root, segs = data
  ds = WorldModelDataset(segs, split=None, deterministic=True)
  C = ds.cfg.context_frames
  assert len(ds) == 3 * (100 - 1 - 4 - C * 4 + 1)
  item = ds[10]
  idx = item["frame_index"].numpy()
  assert np.all(np.diff(idx) == 4) and len(idx) == C + 1
  np.testing.assert_allclose(np.diff(item["t_world"].numpy()), 0.2, atol=1e-5)
  # "now" is the last context frame: zero pose; the car drives forward (+x) in its car frame
  assert item["poses"][C - 1].abs().max() < 1e-6
  assert item["poses"][C, 0] > 1.0 and item["poses"][0, 0] < -10
  # transitions chain back into the poses
  # (planar drive: step lengths are rotation invariant, yaw increments add up)
  P, T = item["poses"].numpy(), item["transitions"].numpy()
  np.testing.assert_allclose(np.linalg.norm(T[1:, :3], axis=1), np.linalg.norm(np.diff(P[:, :3], axis=0), axis=1),
                             rtol=1e-4)
  np.testing.assert_allclose(T[1:, 5], np.diff(P[:, 5]), atol=1e-5)
  chained = compose_transitions(T)                     # poses in the frame of window frame 0
  np.testing.assert_allclose(np.linalg.norm(chained[:, :3] - chained[C - 1, :3], axis=1),
                             np.linalg.norm(P[:, :3], axis=1), rtol=1e-4, atol=1e-4)
  # plan starts at the car, ~10 m/s forward; only 100 frames -> late plan points are invalid
  assert item["plan"][0, :3].abs().max() < 1e-4 and 7 < item["plan"][0, 3] < 14
  assert item["plan_mask"][0] and not item["plan_mask"][-1]
  # the image of "now" is that frame of the video
  fr = SegmentFrames(segs[item["segment"].item()], (64, 128))
  np.testing.assert_allclose(item["frames"][C - 1].numpy(), images_to_tensor(fr.frame(int(idx[C - 1]))).numpy())


def test_anchor_is_future_and_in_range(data):
  root, segs = data
  ds = WorldModelDataset(segs, None, WindowConfig(anchor_min_s=1.0, anchor_max_s=2.0), deterministic=True)
  item = ds[0]
  assert item["anchor_valid"]
  now = item["t_world"][ds.cfg.context_frames - 1]
  dt = item["anchor_t"] - now
  assert 0.95 <= dt[0] <= 2.05 and torch.allclose(dt[1:] - dt[:-1], torch.full((4,), 0.2), atol=1e-4)
  assert (item["anchor_pose"][:, 0] > 5).all()
  # windows too close to the segment end have no room for an anchor 2 s ahead
  late = ds[len(ds) // 3 - 1]
  assert not late["anchor_valid"] and late["anchor_frames"].abs().sum() == 0
  # deterministic datasets give the same anchor twice; random ones vary
  assert torch.equal(ds[5]["anchor_t"], ds[5]["anchor_t"])
  rnd = WorldModelDataset(segs, None, WindowConfig(anchor_min_s=1.0, anchor_max_s=2.0), deterministic=False)
  assert len({float(rnd[0]["anchor_t"][0]) for _ in range(8)}) > 1


def test_latent_cache_resumes_and_feeds_dataset(data, vae, tmp_path):
  root, segs = data
  stats = build_latent_cache(root, vae, tmp_path / "c", frame_hw=(64, 128), batch_size=16, max_batches=3,
                             progress=False)
  assert stats.get("stopped_early")
  st_root = store_root(tmp_path / "c", vae.identity, (64, 128))
  assert not (segment_store(st_root, segs[0]) / "done.json").exists()
  with pytest.raises(FileNotFoundError, match="not finished"):
    load_latents(segment_store(st_root, segs[0]))
  stats = build_latent_cache(root, vae, tmp_path / "c", frame_hw=(64, 128), batch_size=16, progress=False)
  assert stats["encoded_frames"] == 300 - 48 and stats["already_cached"] == 0
  again = build_latent_cache(root, vae, tmp_path / "c", frame_hw=(64, 128), progress=False)
  assert again["already_cached"] == 3 and again["encoded_frames"] == 0
  lat = load_latents(segment_store(st_root, segs[0]))
  assert lat.shape == (100, 4, 8, 16) and isinstance(lat, np.memmap)
  # resumed frames equal a direct encode
  fr = SegmentFrames(segs[0], (64, 128))
  for i in (5, 47, 99):
    direct = vae.encode(images_to_tensor(fr.frame(i)[None]))[0].numpy()
    np.testing.assert_allclose(lat[i].astype(np.float32), direct, atol=2e-3 + 1e-3 * np.abs(direct).max())
  ds = WorldModelDataset(segs, None, latent_root=st_root, deterministic=True)
  item = ds[3]
  assert item["latents"].shape == (11, 4, 8, 16) and item["anchors"].shape == (5, 4, 8, 16)
  np.testing.assert_allclose(item["latents"][0].numpy(), lat[item["frame_index"][0].item()].astype(np.float32))


def test_multiworker_loading_matches_single_process(data):
  root, segs = data
  ds = WorldModelDataset(segs, None, deterministic=True)
  sub = torch.utils.data.Subset(ds, list(range(0, len(ds), 37)))
  ref = list(DataLoader(sub, batch_size=2, num_workers=0))
  par = list(DataLoader(sub, batch_size=2, num_workers=2, multiprocessing_context=LOADER_START_METHOD))
  assert len(ref) == len(par)
  for a, b in zip(ref, par):
    for k in a:
      assert torch.equal(a[k], b[k]), k


def test_bad_inputs_named(data, tmp_path):
  root, segs = data
  with pytest.raises(FileNotFoundError, match="nowhere"):
    WorldModelDataset(tmp_path / "nowhere")
  bad = make_segment(tmp_path / "bad", n_frames=30, seed=3)
  (bad / "camera.json").write_text(json.dumps({"width": 128}))
  with pytest.raises(SegmentError, match="camera.json"):
    segment_camera(bad)
  # a truncated pose file: the segment is skipped by discovery, not fatal
  with open(bad / "global_pose" / "frame_positions", "wb") as f:
    f.write(b"\x93NUMPY garbage")
  good = make_segment(tmp_path / "bad", "other|2024-01-01--00-00-00", n_frames=80, seed=4)
  assert find_segments(tmp_path / "bad") == [good]
  with pytest.raises(ValueError, match="no windows"):
    WorldModelDataset([make_segment(tmp_path / "short", n_frames=20, seed=5)], None)
  # frame size that does not match camera.json
  wrong = make_segment(tmp_path / "wrong", n_frames=10, seed=6)
  (wrong / "camera.json").write_text(json.dumps({"width": 256, "height": 128, "focal": 455.0}))
  with pytest.raises(SegmentError, match="camera.json wrong"):
    SegmentFrames(wrong, (64, 128)).frame(0)


def test_large_camera_is_area_downscaled_into_the_model_frame(tmp_path):
  """An EON-sized source (1164x874, f=910) maps into the 64x128 model frame: prefiltered, and geometrically the same
  model frame as an exact model-frame camera (the warp is exact up to resampling)."""
  from tests.training.segment_fixture import camera_for, render
  eon = {"width": 1164, "height": 874, "focal": 910.0, "cx": 582.0, "cy": 437.0}
  seg = make_segment(tmp_path, n_frames=2, seed=1, video=False)
  (seg / "camera.json").write_text(json.dumps(eon))
  fr = SegmentFrames(seg, (64, 128))
  assert fr.pre_scale < 1.0
  big = render(eon, np.zeros(2), 0.0, seed=1)
  got = fr._convert(big, 0).astype(np.float32)
  want = render(camera_for(128, 64), np.zeros(2), 0.0, seed=1).astype(np.float32)
  assert np.abs(got - want).mean() < 7        # same geometry (a 4 px vertical shift gives ~22, horizontal ~8)
  assert got.shape == (64, 128, 3)
