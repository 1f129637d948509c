import subprocess
import sys
from pathlib import Path

DEVICE_MODULES = ["common.transformations.orientation", "common.transformations.coordinates",
                  "common.transformations.camera", "common.poses", "common.calibration",
                  "selfdrive.controls.vehicle_model", "tools.lib.video", "tools.lib.segment", "tools.lib.segment_info"]


def test_device_side_never_imports_torch_or_training():
  code = ("import sys\n" + "".join(f"import {m}\n" for m in DEVICE_MODULES) +
          "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'training'))]\n"
          "assert not bad, bad\n")
  root = Path(__file__).resolve().parents[2]
  r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
