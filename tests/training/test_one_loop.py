"""One training loop: every training entry point runs on training/trainer.py, and no other module of training/ or
tools/ writes an optimizer loop of its own (a backward pass, an optimizer, gradient clipping). Read statically with
tests/test_layering.py's import graph; nothing is imported. bench/ is not checked: its benchmarks time a bare step."""
import ast
from pathlib import Path

from tests.test_layering import import_graph

ROOT = Path(__file__).resolve().parents[2]
TRAINER = "training.trainer"
# every `python -m` tool that trains weights
ENTRY_POINTS = ("training.vae", "training.worldmodel.train", "training.policy.train", "training.onpolicy.train")
CHECKED = ("training", "tools")


def loop_calls(path: Path, root: Path = ROOT) -> list[str]:
  """'file:line: what' for every backward pass, torch.optim optimizer or gradient clipping the module writes."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      name = node.func.attr
      owner = ast.unparse(node.func.value)
      if name == "backward" or name.startswith("clip_grad") or owner.startswith(("torch.optim", "optim")):
        out.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node.func)}")
  return out


def test_every_training_entry_point_imports_the_trainer():
  edges, _ = import_graph(ROOT, ("training",))
  missing = [m for m in ENTRY_POINTS if m not in edges or TRAINER not in edges[m]]
  assert not missing, f"training entry points not on {TRAINER}: {missing}"


def test_no_other_module_repeats_the_loop():
  files = [p for d in CHECKED for p in sorted((ROOT / d).rglob("*.py")) if p != ROOT / "training" / "trainer.py"]
  assert len(files) > 50
  assert loop_calls(ROOT / "training" / "trainer.py"), "the checker no longer sees the trainer's own loop"
  bad = [c for p in files for c in loop_calls(p)]
  assert not bad, "training loops outside training/trainer.py:\n" + "\n".join(bad)


def test_checker_sees_a_loop(tmp_path):
  p = tmp_path / "loop.py"
  p.write_text("import torch\nopt = torch.optim.AdamW([])\nloss.backward()\n"
               "torch.nn.utils.clip_grad_norm_(ps, 1.0)\nopt.step()\nx.sum()\n")
  assert loop_calls(p, tmp_path) == ["loop.py:2: torch.optim.AdamW", "loop.py:3: loss.backward",
                                     "loop.py:4: torch.nn.utils.clip_grad_norm_"]
