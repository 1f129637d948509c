import pytest
import torch

from training.distributed import all_reduce_mean, setup_distributed
from training.metrics import MetricsLogger


def test_metrics_header_grows_and_resume(tmp_path):
  m = MetricsLogger(tmp_path)
  m.log(1, loss=2.0)
  m.log(2, loss=1.5, lr=torch.tensor(0.1))
  m.log(2, split="val", psnr=20.0)
  rows = MetricsLogger(tmp_path).read()  # a fresh logger (resumed run) reads the same file
  assert [r["step"] for r in rows] == [1, 2, 2]
  assert rows[0]["lr"] is None and rows[1]["lr"] == pytest.approx(0.1)
  assert rows[2]["split"] == "val" and rows[2]["psnr"] == 20.0 and rows[2]["loss"] is None
  m2 = MetricsLogger(tmp_path)
  m2.log(3, loss=1.0)
  assert len(m2.read()) == 4
  png = m2.plot()
  assert png == tmp_path / "curves.png" and png.stat().st_size > 1000


def test_metrics_bad_input(tmp_path):
  m = MetricsLogger(tmp_path)
  with pytest.raises(TypeError, match="'loss'"):
    m.log(1, loss="high")
  (tmp_path / "other.csv").write_text("a,b\n1,2\n")
  with pytest.raises(ValueError, match="other.csv"):
    MetricsLogger(tmp_path, "other.csv")


def test_single_process_distributed(monkeypatch):
  for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
    monkeypatch.delenv(k, raising=False)
  info = setup_distributed(device="cpu")
  assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
  t = torch.tensor([1.0, 3.0])
  assert torch.equal(all_reduce_mean(t), t)
  monkeypatch.setenv("WORLD_SIZE", "two")
  with pytest.raises(ValueError, match="WORLD_SIZE"):
    setup_distributed()
  monkeypatch.setenv("WORLD_SIZE", "2")
  monkeypatch.setenv("RANK", "5")
  with pytest.raises(ValueError, match="RANK=5"):
    setup_distributed()
