"""The main job end to end at its smallest size (`--preset smoke`): every stage of the method runs on the tools a
user would type, so no stage can break silently. Sizes are far too small for the figures to mean anything; this
checks that each stage finishes, writes its result file, and that the report shows every figure with a status."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import training.pipeline as pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.long
@pytest.mark.timeout(1500)
def test_smoke_pipeline_runs_every_stage(tmp_path):
  out = tmp_path / "smoke"
  proc = subprocess.run([sys.executable, "-m", "training.pipeline", "--preset", "smoke", "--out", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  expected = [st.name for st in pipeline.stages(pipeline.PRESETS["smoke"], out.resolve())]
  assert list(result["stages"]) == expected
  report = json.loads((out / "report.json").read_text())
  missing = [name for name in expected if name != "real_segment_info" and report["results"].get(name) is None]
  assert not missing, f"stages without a result file: {missing}"
  statuses = {f["label"]: f["status"] for f in report["figures"]}
  assert "not run" not in statuses.values(), statuses
  # the world-model run and its expert check drove the simulator with the preset's nearer anchors
  assert [f["value"] for f in report["figures"] if f["key"] == "wm_anchor_max_s"] == [3.0]
  assert report["results"]["expert_check_worldmodel"]["wm_anchor_max_s"] == 3.0
  page = (out / "report.html").read_text()
  assert "data:image/png;base64," in page and "data:video/mp4;base64," in page   # self-contained
  # a second run finds every stage fresh and reruns nothing
  again = subprocess.run([sys.executable, "-m", "training.pipeline", "--preset", "smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-4000:]
  stages = json.loads((out / "report.json").read_text())["stages"]
  assert all(r.get("cached") for r in stages)
