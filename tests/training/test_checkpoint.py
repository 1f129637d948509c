import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from training.checkpoint import list_checkpoints, load_checkpoint, load_latest, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _state(v: float):
  return {"model": {"w": torch.full((3, 4), v), "b": torch.arange(4.0) + v}, "ema": {"w": torch.full((3, 4), -v)}}


def test_roundtrip_and_keep_last(tmp_path):
  for step in (10, 20, 30, 40):
    save_checkpoint(tmp_path, step, _state(step), optimizer_state={"lr": 0.1 * step}, config={"preset": "tiny"},
                    extra={"note": step}, keep=2)
  assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000030.json", "ckpt_00000040.json"]
  assert not (tmp_path / "ckpt_00000010.safetensors").exists()
  assert load_latest(tmp_path)["optimizer"] is None                 # only a resume reads the optimizer state
  ck = load_latest(tmp_path, load_optimizer=True)
  assert ck["step"] == 40 and ck["config"] == {"preset": "tiny"} and ck["extra"] == {"note": 40}
  assert torch.equal(ck["state"]["model"]["w"], torch.full((3, 4), 40.0))
  assert torch.equal(ck["state"]["ema"]["w"], torch.full((3, 4), -40.0))
  assert ck["optimizer"] == {"lr": pytest.approx(4.0)}
  assert (tmp_path / "latest").read_text().strip() == "ckpt_00000040.json"
  assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_empty_dir_returns_none(tmp_path):
  assert load_latest(tmp_path) is None
  assert load_latest(tmp_path / "missing") is None


def test_corrupt_newest_falls_back(tmp_path, caplog):
  save_checkpoint(tmp_path, 1, _state(1.0))
  save_checkpoint(tmp_path, 2, _state(2.0))
  st = tmp_path / "ckpt_00000002.safetensors"
  st.write_bytes(st.read_bytes()[:50])  # truncated
  with caplog.at_level("WARNING"):
    ck = load_latest(tmp_path)
  assert ck["step"] == 1
  assert "ckpt_00000002.safetensors" in caplog.text
  with pytest.raises(ValueError, match="ckpt_00000002.safetensors"):
    load_checkpoint(tmp_path / "ckpt_00000002.json")


def test_weights_load_without_the_optimizer_file_but_a_resume_does_not(tmp_path, caplog):
  """A run copied without its optimizer state (for actors or inference) still loads its weights; a resume needs the
  optimizer state, so it skips that checkpoint for an older complete one."""
  save_checkpoint(tmp_path, 1, _state(1.0), optimizer_state={"lr": 0.1})
  save_checkpoint(tmp_path, 2, _state(2.0), optimizer_state={"lr": 0.2})
  (tmp_path / "ckpt_00000002.optim.pt").unlink()
  ck = load_latest(tmp_path)
  assert ck["step"] == 2 and torch.equal(ck["state"]["model"]["w"], torch.full((3, 4), 2.0))
  with caplog.at_level("WARNING"):
    ck = load_latest(tmp_path, load_optimizer=True)
  assert ck["step"] == 1 and ck["optimizer"] == {"lr": pytest.approx(0.1)}
  assert "ckpt_00000002.optim.pt" in caplog.text
  with pytest.raises(ValueError, match="ckpt_00000002.optim.pt: missing"):
    load_checkpoint(tmp_path / "ckpt_00000002.json", load_optimizer=True)
  (tmp_path / "ckpt_00000002.safetensors").unlink()          # the weights themselves stay required
  with pytest.raises(ValueError, match="ckpt_00000002.safetensors: missing"):
    load_checkpoint(tmp_path / "ckpt_00000002.json")


def test_garbage_json_falls_back(tmp_path, caplog):
  save_checkpoint(tmp_path, 5, _state(5.0))
  (tmp_path / "ckpt_00000009.json").write_text("{not json")
  with caplog.at_level("WARNING"):
    assert load_latest(tmp_path)["step"] == 5
  assert "ckpt_00000009.json" in caplog.text
  (tmp_path / "ckpt_00000010.json").write_text(json.dumps({"step": 10}))
  with pytest.raises(ValueError, match="missing field 'files'"):
    load_checkpoint(tmp_path / "ckpt_00000010.json")


def test_bad_state_rejected(tmp_path):
  with pytest.raises(TypeError, match="state\\['model'\\]\\['w'\\]"):
    save_checkpoint(tmp_path, 1, {"model": {"w": [1, 2]}})
  with pytest.raises(ValueError, match="may not contain"):
    save_checkpoint(tmp_path, 1, {"a/b": {}})


class _Payload:
  """Unpickling this runs os.mkdir(marker): a stand-in for code planted in a run directory."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def _plant_pickle(run: Path, marker: Path) -> None:
  """Replace the newest checkpoint's .optim.pt by a pickle with a side effect, re-recording its size in the json
  (what someone handing over a crafted run directory would do)."""
  js = list_checkpoints(run)[-1]
  opt_path = run / js.name.replace(".json", ".optim.pt")
  torch.save({"state": {}, "param_groups": [], "evil": _Payload(marker)}, opt_path)
  meta = json.loads(js.read_text())
  meta["files"][opt_path.name] = opt_path.stat().st_size
  js.write_text(json.dumps(meta))


def test_crafted_optimizer_state_never_runs(tmp_path):
  save_checkpoint(tmp_path, 1, _state(1.0), optimizer_state={"lr": 0.1})
  save_checkpoint(tmp_path, 2, _state(2.0), optimizer_state={"lr": 0.2})
  marker = tmp_path / "pwned"
  _plant_pickle(tmp_path, marker)
  # export / evaluate / rollout: weights only, the optimizer file is not even opened
  ck = load_latest(tmp_path)
  assert ck["step"] == 2 and ck["optimizer"] is None and not marker.exists()
  # resume: read with weights_only=True, which refuses the object; the previous checkpoint is used instead
  with pytest.raises(ValueError, match="ckpt_00000002.optim.pt"):
    load_checkpoint(tmp_path / "ckpt_00000002.json", load_optimizer=True)
  ck = load_latest(tmp_path, load_optimizer=True)
  assert ck["step"] == 1 and ck["optimizer"] == {"lr": pytest.approx(0.1)}
  assert not marker.exists()


def test_real_optimizer_state_loads_weights_only(tmp_path):
  model = torch.nn.Linear(4, 3)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
  model(torch.ones(2, 4)).sum().backward()
  opt.step()
  save_checkpoint(tmp_path, 1, {"model": model.state_dict()}, opt.state_dict())
  opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
  opt2.load_state_dict(load_latest(tmp_path, load_optimizer=True)["optimizer"])
  assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


TRAINER = textwrap.dedent("""
  import sys, time, torch
  from training.checkpoint import save_checkpoint, load_latest
  run, total = sys.argv[1], int(sys.argv[2])
  torch.manual_seed(0)
  model = torch.nn.Linear(64, 64)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
  start = 0
  ck = load_latest(run, load_optimizer=True)
  if ck is not None:
    model.load_state_dict(ck["state"]["model"]); opt.load_state_dict(ck["optimizer"]); start = ck["step"]
    print("RESUMED", start, flush=True)
  g = torch.Generator().manual_seed(1)
  for step in range(start + 1, total + 1):
    x = torch.randn(32, 64, generator=g)
    loss = (model(x) - x.flip(-1)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    save_checkpoint(run, step, {"model": model.state_dict()}, opt.state_dict(), {"total": total}, keep=2)
  print("DONE", total, flush=True)
""")


def test_sigkill_midrun_then_resume(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
  cmd = [sys.executable, "-c", TRAINER, str(tmp_path), "100000"]
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 60
    while len(list_checkpoints(tmp_path)) < 2 or load_latest(tmp_path) is None or load_latest(tmp_path)["step"] < 20:
      assert proc.poll() is None, proc.stderr.read().decode()
      assert time.time() < deadline, "trainer made no checkpoints"
      time.sleep(0.05)
    time.sleep(0.137)  # land somewhere inside a save
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
  finally:
    if proc.poll() is None:
      proc.kill()
  ck = load_latest(tmp_path)
  assert ck is not None and ck["step"] >= 20
  killed_at = ck["step"]
  out = subprocess.run([sys.executable, "-c", TRAINER, str(tmp_path), str(killed_at + 5)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert f"RESUMED {killed_at}" in out.stdout and f"DONE {killed_at + 5}" in out.stdout
  assert load_latest(tmp_path)["step"] == killed_at + 5
