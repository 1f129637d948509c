"""The project's import layering, read statically from the source (no module is imported).

Every `import` and `from ... import` of every module under PACKAGES counts: at the top of the file and inside
functions alike (a function-level import still ties the two modules together), but not those under
`if TYPE_CHECKING:`, which never run. An import of `a.b.c` (or `from a.b import c` where `c` is a module) is an
edge to the deepest project module the name reaches; a package's `__init__` is a module like any other, and the
parent packages Python runs on the way are not counted as edges.

Two rules:
  (a) no import cycle between modules (a cycle is reported as `a -> b -> a`);
  (b) the device side (cereal/, common/, modeld/, selfdrive/, tools/lib/) imports neither tools/ outside tools/lib,
      nor training/, torch or bench/ (tests/test_device_imports.py checks the same at runtime for what is imported).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cereal", "common", "modeld", "selfdrive", "tools", "training", "bench")
DEVICE_SIDE = ("cereal", "common", "modeld", "selfdrive", "tools.lib")
DEVICE_FORBIDDEN = ("tools", "training", "torch", "bench")   # tools.lib is allowed (see is_forbidden)
# Test harnesses beside device code (openpilot's selfdrive/test/) are not shipped (tools/release/build.py skips
# `test` folders), so they may drive the simulator.
NOT_SHIPPED = ("selfdrive.test",)


def _under(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + ".")


def module_name(root: Path, path: Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def find_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
  """Dotted module name -> file, for every .py file under the given top-level directories."""
  mods = {}
  for pkg in packages:
    for path in sorted((root / pkg).rglob("*.py")):
      if "__pycache__" not in path.parts:
        mods[module_name(root, path)] = path
  return mods


def _is_type_checking(test: ast.expr) -> bool:
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
         (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, name: str) -> list[tuple[str, int]]:
  """(absolute dotted name, line) for every import in the file that runs (any depth; TYPE_CHECKING blocks skipped).
  For `from m import x` both `m.x` and `m` are candidates; the caller resolves which one is a module."""
  tree = ast.parse(path.read_text(), filename=str(path))
  is_pkg = path.name == "__init__.py"
  out: list[tuple[str, int]] = []

  def visit(node):
    if isinstance(node, ast.If) and _is_type_checking(node.test):
      for child in node.orelse:
        visit(child)
      return
    if isinstance(node, ast.Import):
      out.extend((a.name, node.lineno) for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:   # relative: resolve against this module's package
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
      else:
        mod = node.module or ""
      for a in node.names:
        out.append((f"{mod}.{a.name}" if a.name != "*" else mod, node.lineno))
    for child in ast.iter_child_nodes(node):
      visit(child)

  visit(tree)
  return out


def resolve(target: str, modules: dict[str, Path]) -> str | None:
  """The deepest project module that `target` (a dotted name, possibly ending in an attribute) reaches."""
  parts = target.split(".")
  while parts:
    cand = ".".join(parts)
    if cand in modules:
      return cand
    parts.pop()
  return None


def import_graph(root: Path, packages=PACKAGES):
  """(edges: module -> {module: first line}, raw: module -> [(imported dotted name, line)])."""
  modules = find_modules(root, packages)
  edges: dict[str, dict[str, int]] = {m: {} for m in modules}
  raw: dict[str, list[tuple[str, int]]] = {}
  for m, path in modules.items():
    raw[m] = imported_names(path, m)
    for target, line in raw[m]:
      dst = resolve(target, modules)
      if dst is not None and dst != m:
        edges[m].setdefault(dst, line)
  return edges, raw


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
  """One concrete cycle [a, b, ..., a] per strongly connected component with more than one module (Tarjan)."""
  index, low, on_stack, stack, sccs = {}, {}, set(), [], []
  counter = [0]

  def strongconnect(v):
    work = [(v, iter(sorted(edges[v])))]
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    while work:
      node, it = work[-1]
      for w in it:
        if w not in index:
          index[w] = low[w] = counter[0]
          counter[0] += 1
          stack.append(w)
          on_stack.add(w)
          work.append((w, iter(sorted(edges[w]))))
          break
        if w in on_stack:
          low[node] = min(low[node], index[w])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          comp = []
          while True:
            w = stack.pop()
            on_stack.discard(w)
            comp.append(w)
            if w == node:
              break
          sccs.append(comp)

  for v in sorted(edges):
    if v not in index:
      strongconnect(v)

  cycles = []
  for comp in sccs:
    if len(comp) < 2:
      continue
    members, start = set(comp), min(comp)
    # breadth-first from start inside the component back to start: the shortest cycle through `start`
    prev, frontier, found = {start: None}, [start], None
    while frontier and found is None:
      nxt = []
      for u in frontier:
        for w in sorted(edges[u]):
          if w == start:
            found = u
            break
          if w in members and w not in prev:
            prev[w] = u
            nxt.append(w)
        if found is not None:
          break
      frontier = nxt
    path = [start]
    u = found
    while u is not None and u != start:
      path.append(u)
      u = prev[u]
    cycles.append([start] + path[1:][::-1] + [start])
  return cycles


def is_forbidden(target: str) -> bool:
  if _under(target, "tools"):
    return not _under(target, "tools.lib")
  return any(_under(target, p) for p in DEVICE_FORBIDDEN if p != "tools")


def device_violations(root: Path, packages=PACKAGES, device_side=DEVICE_SIDE) -> list[str]:
  """'file:line: module imports name' for every device-side import of tools/ (outside tools/lib), training/, torch
  or bench/."""
  _, raw = import_graph(root, packages)
  modules = find_modules(root, packages)
  out = []
  for m, imports in raw.items():
    if not any(_under(m, d) for d in device_side) or any(_under(m, n) for n in NOT_SHIPPED):
      continue
    for target, line in imports:
      if is_forbidden(target):
        out.append(f"{modules[m].relative_to(root)}:{line}: {m} imports {target}")
  return out


def format_cycle(cycle: list[str], edges) -> str:
  return " -> ".join(f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


# ---- the project ----

def test_no_import_cycles():
  edges, _ = import_graph(ROOT)
  assert len(edges) > 60, f"only {len(edges)} modules found under {PACKAGES}"
  cycles = find_cycles(edges)
  assert not cycles, "import cycles:\n" + "\n".join(format_cycle(c, edges) for c in cycles)


def test_device_side_imports_only_device_side():
  bad = device_violations(ROOT)
  assert not bad, "device-side modules import tools/, training/, torch or bench/:\n" + "\n".join(bad)


# ---- the checker itself, on a small made-up tree ----

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
  for rel, src in files.items():
    p = tmp_path / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(src)
  return tmp_path


def test_checker_finds_cycles_through_function_level_and_relative_imports(tmp_path):
  root = _tree(tmp_path, {
    "training/__init__.py": "",
    "training/vae.py": "import numpy\ndef main():\n  from training.data.cache import build\n",
    "training/data/__init__.py": "",
    "training/data/cache.py": "from ..vae import to_tensor\n",
    "training/data/frames.py": "from . import cache\n",            # not in the cycle: nothing imports frames
    "common/__init__.py": "",
    "common/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from common import b\n",
    "common/b.py": "import common.a\n",                              # a -> b only under TYPE_CHECKING: no cycle
  })
  edges, _ = import_graph(root, ("training", "common"))
  assert edges["training.vae"] == {"training.data.cache": 3}
  assert edges["training.data.cache"] == {"training.vae": 1}
  assert edges["training.data.frames"] == {"training.data.cache": 1}
  assert edges["common.a"] == {}
  cycles = find_cycles(edges)
  assert cycles == [["training.data.cache", "training.vae", "training.data.cache"]]
  assert format_cycle(cycles[0], edges) == \
      "training.data.cache (line 1) -> training.vae (line 3) -> training.data.cache"


def test_checker_reports_a_three_module_cycle_once(tmp_path):
  root = _tree(tmp_path, {"bench/__init__.py": "", "bench/a.py": "import bench.b\n", "bench/b.py": "import bench.c\n",
                          "bench/c.py": "from bench import a\n", "bench/d.py": "import bench.a\n"})
  edges, _ = import_graph(root, ("bench",))
  assert find_cycles(edges) == [["bench.a", "bench.b", "bench.c", "bench.a"]]


def test_checker_flags_device_side_imports(tmp_path):
  root = _tree(tmp_path, {
    "selfdrive/__init__.py": "",
    "selfdrive/loggerd.py": "from tools.lib.logreader import LogWriter\n",        # allowed: tools/lib
    "selfdrive/bad.py": "def f():\n  import torch.nn\n  from tools.sim import world\n",
    "tools/__init__.py": "", "tools/lib/__init__.py": "", "tools/lib/logreader.py": "",
    "tools/lib/plot.py": "import bench.worldmodel\n",
    "tools/sim/__init__.py": "", "tools/sim/world.py": "import torch\nimport training.vae\n",   # not device side
    "modeld/__init__.py": "", "modeld/run.py": "from training import vae\n",
    "training/__init__.py": "", "training/vae.py": "", "bench/__init__.py": "", "bench/worldmodel.py": "",
  })
  bad = device_violations(root, ("selfdrive", "tools", "modeld", "training", "bench"))
  assert sorted(bad) == sorted([
    "selfdrive/bad.py:2: selfdrive.bad imports torch.nn",
    "selfdrive/bad.py:3: selfdrive.bad imports tools.sim.world",
    "tools/lib/plot.py:1: tools.lib.plot imports bench.worldmodel",
    "modeld/run.py:1: modeld.run imports training.vae",
  ])
