"""python -m tools.sim.run: bridge + modeld + controlsd + loggerd under the manager, closed loop in real time,
logged by loggerd."""
import json

import pytest

pytest.importorskip("torch")


@pytest.mark.timeout(180)
def test_sim_run_closed_loop_through_the_stack(tmp_path, capsys):
  from tests.modeld.conftest import _export
  from tools.lib.logreader import LogReader
  from tools.sim.run import main
  model_dir = _export(tmp_path / "model", seed=0)
  assert main(["--scenario", "keep_straight_off-1.0_hd+0_v15", "--duration", "4", "--model-dir", str(model_dir),
               "--log-root", str(tmp_path / "logs")]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(res["exit_codes"].values()) == {0}
  assert res["frames"] >= 70 and res["engaged_share"] > 0.1
  kinds, model_valid, steered = {}, 0, 0
  for ev in LogReader(tmp_path / "logs" / res["log"][0].split("/")[-1] / "rlog.zst"):
    w = ev.which()
    kinds[w] = kinds.get(w, 0) + 1
    model_valid += w == "modelV2" and ev.valid
    steered += w == "carControl" and ev.carControl.latActive
  for s in ("roadCameraState", "carState", "modelV2", "drivingModelData", "carControl", "controlsState", "selfdriveState"):
    assert kinds.get(s, 0) > 0, s
  assert model_valid >= 40 and steered >= 100      # modeld ran on the frames, controlsd steered the car
