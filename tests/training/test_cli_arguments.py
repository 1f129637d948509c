"""Training-side command lines check their arguments up front: usage errors exit 2 with the argument named on the
last line, an unusable data folder is a one-line runtime error (exit 1), and nothing is written before."""
import pytest


def _usage_error(main, argv, capsys, needle):
  with pytest.raises(SystemExit) as e:
    main(argv)
  assert e.value.code == 2
  assert needle in capsys.readouterr().err.strip().splitlines()[-1]


def test_pipeline_unknown_stage(tmp_path, capsys):
  from training.pipeline import main
  for opt in ("--only", "--force"):
    _usage_error(main, ["--out", str(tmp_path / "run"), opt, "simulate", "no_such_stage"], capsys, "no_such_stage")
  assert not (tmp_path / "run").exists()


def test_rollout_zero_frames(tmp_path, capsys):
  from training.worldmodel.rollout import main
  _usage_error(main, ["--run", str(tmp_path), "--segment", str(tmp_path), "--frames", "0"], capsys, "--frames")
  _usage_error(main, ["--run", str(tmp_path), "--segment", str(tmp_path), "--temperature", "nan"], capsys,
               "--temperature")
  assert main(["--run", str(tmp_path / "norun"), "--segment", str(tmp_path), "--frames", "2"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "norun" in err[0]


def test_worldmodel_train_max_steps_and_data(tmp_path, capsys):
  from training.worldmodel.train import main
  (tmp_path / "empty").mkdir()
  _usage_error(main, ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--max-steps", "0"], capsys,
               "--max-steps")
  _usage_error(main, ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys, "--data")
  assert main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--max-steps", "1"]) == 1
  assert "no segment" in capsys.readouterr().err.strip().splitlines()[-1]
  assert not (tmp_path / "o").exists()


def test_policy_train_max_steps_and_data(tmp_path, capsys):
  from training.policy.train import main
  (tmp_path / "empty").mkdir()
  _usage_error(main, ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--max-steps", "0"], capsys,
               "--max-steps")
  _usage_error(main, ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys, "--data")
  assert main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--max-steps", "1"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no segment" in err[0]
