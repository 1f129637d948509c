"""Assemble what goes on a device ("flashing"): the runtime half of the repo, nothing from training.

  python -m tools.release.build --out DIR [--model-dir DIR] [--registry DIR] [--require-artifacts] [--force]

DIR receives
  cereal/ common/ selfdrive/ modeld/ tools/lib/     the device-side packages (no tests, no __pycache__)
  modeld/models/                                    the driving model (--model-dir, default modeld/models) with its
                                                    scons-built *_tinygrad.pkl artifacts when they are current
  build/tinygrad_registry/                          registry entries for exactly those artifacts, so the release's
                                                    modeld trusts what this build shipped and nothing else
  launch.sh                                         starts the manager (python3 -m selfdrive.manager "$@")
  requirements.txt                                  the base dependencies (pyproject [project].dependencies)
  RELEASE.json                                      git commit, every file with its sha256, artifact list
Checks (each fails the build with one line naming the file): every module compiles; no module imports torch,
training, or another training-only package; an artifact that is stale or not in the build registry is left out
(--require-artifacts makes that an error). Last stdout line: JSON summary.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from common.cli import emit_result, make_parser, tool_main

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cereal", "common", "selfdrive", "modeld", "tools/lib")
TRAINING_ONLY = ("torch", "training", "diffusers", "ray", "safetensors", "torchvision", "matplotlib")
SKIP_DIRS = {"__pycache__", ".pytest_cache", "test", "tests"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp")
LAUNCH_SH = """#!/usr/bin/env bash
# worldpilot release: start the stack's manager (modeld, controlsd, loggerd) from this directory.
set -e
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m selfdrive.manager "$@"
"""


class ReleaseError(RuntimeError):
  pass


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _copy_tree(src: Path, dst: Path, skip_models: bool) -> None:
  for root, dirs, files in os.walk(src):
    rel = Path(root).relative_to(src)
    dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not (skip_models and rel == Path(".") and d == "models"))
    for f in sorted(files):
      if f.endswith(SKIP_SUFFIXES):
        continue
      out = dst / rel / f
      out.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(Path(root) / f, out)


def forbidden_imports(py: Path) -> list[str]:
  """Top-level names of training-only packages a module imports (anywhere in the file)."""
  try:
    tree = ast.parse(py.read_text(), filename=str(py))
  except SyntaxError as e:
    raise ReleaseError(f"{py}: does not parse ({e.msg}, line {e.lineno})") from e
  bad = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    bad += [n for n in names if n.split(".")[0] in TRAINING_ONLY]
  return bad


def base_requirements() -> list[str]:
  with open(REPO / "pyproject.toml", "rb") as f:
    return list(tomllib.load(f)["project"]["dependencies"])


def _git_commit() -> str:
  try:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    return "unknown"
  return (r.stdout.strip() + ("-dirty" if dirty else "")) if r.returncode == 0 else "unknown"


def build_release(out: Path, model_dir: Path | None = None, registry=None, require_artifacts: bool = False,
                  force: bool = False) -> dict:
  from modeld import tinygrad_runtime as tr
  out = Path(out)
  model_dir = Path(model_dir) if model_dir is not None else REPO / "modeld" / "models"
  if out.exists() and not force and any(out.iterdir()):
    raise ReleaseError(f"{out}: exists and is not empty (use --force to replace it)")
  if not model_dir.is_dir() or not any(model_dir.glob("*.onnx")):
    raise ReleaseError(f"{model_dir}: no ONNX model to ship")
  stage = Path(tempfile.mkdtemp(prefix=".release-", dir=out.parent if out.parent.exists() else None))
  try:
    for pkg in PACKAGES:
      _copy_tree(REPO / pkg, stage / pkg, skip_models=(pkg == "modeld"))
    for init in ("tools/__init__.py",):
      shutil.copy2(REPO / init, stage / init)
    # the model and its current, registered artifacts
    shipped_models = stage / "modeld" / "models"
    shipped_models.mkdir(parents=True, exist_ok=True)
    artifacts, skipped = [], []
    for f in sorted(model_dir.iterdir()):
      if f.is_file() and not f.name.endswith(tr.ARTIFACT_SUFFIX) and not f.name.endswith(SKIP_SUFFIXES):
        shutil.copy2(f, shipped_models / f.name)
    reg_out = stage / "build" / "tinygrad_registry"
    for onnx_file in sorted(model_dir.glob("*.onnx")):
      art = tr.artifact_path(onnx_file)
      try:
        tr.check_trusted(onnx_file, registry=registry)
      except tr.ArtifactRefused as e:
        if require_artifacts:
          raise ReleaseError(str(e)) from e
        skipped.append(str(e))
        continue
      shutil.copy2(art, shipped_models / art.name)
      tr.register(shipped_models / art.name, tr.sha256_file(onnx_file), reg_out)
      # the registry entry names the artifact where it will live on the device
      entry = reg_out / f"{tr.sha256_file(art)}.json"
      data = json.loads(entry.read_text())
      data["artifact"] = f"modeld/models/{art.name}"
      entry.write_text(json.dumps(data) + "\n")
      artifacts.append(art.name)
    # checks: every module compiles and none imports training-only packages
    for py in sorted(stage.rglob("*.py")):
      rel = py.relative_to(stage)
      bad = forbidden_imports(py)
      if bad:
        raise ReleaseError(f"{REPO / rel}: imports {sorted(set(bad))}, which the device does not have")
      try:
        compile(py.read_text(), str(py), "exec")
      except SyntaxError as e:
        raise ReleaseError(f"{REPO / rel}: does not compile ({e.msg}, line {e.lineno})") from e
    (stage / "launch.sh").write_text(LAUNCH_SH)
    os.chmod(stage / "launch.sh", 0o755)
    (stage / "requirements.txt").write_text("\n".join(base_requirements()) + "\n")
    files = {str(p.relative_to(stage)): _sha256(p) for p in sorted(stage.rglob("*")) if p.is_file()}
    manifest = {"commit": _git_commit(), "model_dir": str(model_dir), "tinygrad_artifacts": artifacts,
                "artifacts_left_out": skipped, "requirements": base_requirements(), "files": files}
    (stage / "RELEASE.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
      shutil.rmtree(out)
    os.replace(stage, out)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  return {"out": str(out), "files": len(files) + 1, "tinygrad_artifacts": artifacts, "artifacts_left_out": skipped,
          "commit": manifest["commit"]}


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.release.build", __doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, type=Path, help="release directory to create")
  ap.add_argument("--model-dir", type=Path, default=None, help="model to ship (default modeld/models)")
  ap.add_argument("--registry", type=Path, default=None, help="tinygrad artifact registry of the scons build "
                  "(default $WORLDPILOT_TINYGRAD_REGISTRY or build/tinygrad_registry)")
  ap.add_argument("--require-artifacts", action="store_true", help="fail unless every ONNX has a current artifact")
  ap.add_argument("--force", action="store_true", help="replace an existing --out directory")
  args = ap.parse_args(argv)
  try:
    result = build_release(args.out, args.model_dir, args.registry, args.require_artifacts, args.force)
  except (ReleaseError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for reason in result["artifacts_left_out"]:
    print(f"warning: left out: {reason}", file=sys.stderr)
  emit_result(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
