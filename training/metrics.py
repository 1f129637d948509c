"""Append-only metrics log (metrics.csv) + plotted curves (curves.png).

The CSV's header is the union of every key logged so far, in first-seen order. When a new key appears the
file is rewritten (tmp + os.replace) with the wider header, older rows getting empty cells, so the file
stays a valid CSV at every instant and resumed runs simply keep appending.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path


class MetricsLogger:
  def __init__(self, run_dir, filename: str = "metrics.csv"):
    self.run_dir = Path(run_dir)
    self.run_dir.mkdir(parents=True, exist_ok=True)
    self.path = self.run_dir / filename
    self.fields: list[str] = ["step", "split"]
    if self.path.exists() and self.path.stat().st_size > 0:
      with open(self.path, newline="") as f:
        header = next(csv.reader(f), None)
      if not header or header[:2] != ["step", "split"]:
        raise ValueError(f"{self.path}: not a metrics file (header {header!r} should start with step,split)")
      self.fields = header

  def log(self, step: int, split: str = "train", **values) -> None:
    for k, v in values.items():
      if not isinstance(v, (int, float)) and not (hasattr(v, "item") and getattr(v, "ndim", 0) == 0):
        raise TypeError(f"metric {k!r} must be a number, got {type(v).__name__}")
    values = {k: float(v.item() if hasattr(v, "item") else v) for k, v in values.items()}
    new = [k for k in values if k not in self.fields]
    if new:
      self._widen(self.fields + new)
    row = {"step": int(step), "split": split, **values}
    with open(self.path, "a", newline="") as f:
      csv.DictWriter(f, fieldnames=self.fields).writerow(row)
      f.flush()

  def _widen(self, fields: list[str]) -> None:
    self._rewrite(fields, self.read() if self.path.exists() else [])

  def _rewrite(self, fields: list[str], rows: list[dict]) -> None:
    tmp = self.path.with_name(self.path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=fields)
      w.writeheader()
      for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)
    self.fields = fields

  def drop_rows(self, predicate) -> int:
    """Remove the rows for which predicate(row) is true (rows as read()); atomic rewrite. Returns how many."""
    rows = self.read()
    keep = [r for r in rows if not predicate(r)]
    if len(keep) != len(rows):
      self._rewrite(self.fields, keep)
    return len(rows) - len(keep)

  def read(self) -> list[dict]:
    """Rows as dicts: step int, split str, metrics float (missing -> None)."""
    if not self.path.exists():
      return []
    out = []
    with open(self.path, newline="") as f:
      for r in csv.DictReader(f):
        row = {"step": int(r["step"]), "split": r["split"]}
        for k, v in r.items():
          if k not in ("step", "split"):
            row[k] = float(v) if v not in ("", None) else None
        out.append(row)
    return out

  def plot(self, path=None) -> Path:
    """One subplot per metric, one line per split; saved to run_dir/curves.png by default."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path) if path is not None else self.run_dir / "curves.png"
    rows = self.read()
    keys = [k for k in self.fields if k not in ("step", "split")]
    n = max(1, len(keys))
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
      for split in sorted({r["split"] for r in rows}):
        pts = [(r["step"], r[k]) for r in rows if r["split"] == split and r.get(k) is not None]
        if pts:
          xs, ys = zip(*pts)
          ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=split)
      ax.set_title(k)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
      ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
