"""The device side (cereal, common, modeld, selfdrive, tools/lib) must never import torch or training/.

Every module is imported in a fresh interpreter; then sys.modules must hold neither `torch` nor
`training` (nor any of their submodules).  A module that fails to import is an error too.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = ["cereal", "common", "modeld", "selfdrive", "tools.lib"]

SCRIPT = r"""
import importlib, json, pkgutil, sys, traceback
packages = %r
imported, failed = [], {}
for pkg_name in packages:
  pkg = importlib.import_module(pkg_name)
  imported.append(pkg_name)
  for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
      continue
    try:
      importlib.import_module(info.name)
      imported.append(info.name)
    except Exception:
      failed[info.name] = traceback.format_exc(limit=3)
forbidden = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "training"))
print(json.dumps({"imported": imported, "failed": failed, "forbidden": forbidden[:20]}))
"""


def test_device_side_never_imports_torch_or_training():
  r = subprocess.run([sys.executable, "-c", SCRIPT % (DEVICE_PACKAGES,)], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(r.stdout.strip().splitlines()[-1])
  assert not res["failed"], "device modules that do not import:\n" + "\n".join(f"{k}:\n{v}" for k, v in res["failed"].items())
  assert res["forbidden"] == [], f"device side imported {res['forbidden']}"
  for must in ("cereal.messaging", "cereal.visionipc", "cereal.logwriter", "tools.lib.logreader", "selfdrive.manager",
               "selfdrive.loggerd"):
    assert must in res["imported"]


def test_checker_catches_a_forbidden_import(tmp_path):
  """The same script flags a package one of whose modules pulls in training/ (and reports import errors)."""
  pkg = tmp_path / "fakedev"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "sneaky.py").write_text("import sys, types\nsys.modules['training.policy'] = types.ModuleType('training.policy')\n")
  (pkg / "broken.py").write_text("raise ImportError('no such thing')\n")
  (pkg / "__main__.py").write_text("raise SystemExit('must be skipped')\n")
  r = subprocess.run([sys.executable, "-c", SCRIPT % (["fakedev"],)], cwd=tmp_path, capture_output=True, text=True,
                     timeout=120)
  res = json.loads(r.stdout.strip().splitlines()[-1])
  assert res["forbidden"] == ["training.policy"]
  assert list(res["failed"]) == ["fakedev.broken"]
  assert "fakedev.sneaky" in res["imported"]
