"""Facts shared across packages are written once: the camera height and gravity live in common/modelconstants.py,
and no module of the project (tests aside: they check values independently) spells them as bare numbers (read
statically, nothing imported)."""
import ast
from pathlib import Path

from common.modelconstants import CAMERA_HEIGHT_M, GRAVITY

ROOT = Path(__file__).resolve().parents[1]
NAMED = {CAMERA_HEIGHT_M: "CAMERA_HEIGHT_M", GRAVITY: "GRAVITY"}
CHECKED = ("bench", "cereal", "common", "modeld", "selfdrive", "tools", "training")
DEFINED_IN = ROOT / "common" / "modelconstants.py"


def literal_uses(path: Path, root: Path = ROOT) -> list[str]:
  out = []
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Constant) and type(node.value) is float and node.value in NAMED:
      out.append(f"{path.relative_to(root)}:{node.lineno}: {node.value} (use {NAMED[node.value]})")
  return out


def test_values_are_the_documented_ones():
  assert CAMERA_HEIGHT_M == 1.22 and GRAVITY == 9.81


def test_no_bare_camera_height_or_gravity():
  files = [p for d in CHECKED for p in sorted((ROOT / d).rglob("*.py")) if p != DEFINED_IN]
  assert len(files) > 30
  bad = [u for p in files for u in literal_uses(p)]
  assert not bad, "\n".join(bad)


def test_checker_sees_a_bare_value(tmp_path):
  p = tmp_path / "probe.py"
  p.write_text("def f(h=1.22):\n  return [0.0, 0.0, 9.81], 1.2, 9\n")
  assert literal_uses(p, tmp_path) == ["probe.py:1: 1.22 (use CAMERA_HEIGHT_M)", "probe.py:2: 9.81 (use GRAVITY)"]
