"""The diagnostic on-policy run of docs/experiments.md (ground-truth simulator from the 96-world BC policy):
two Ray actors, 12 minutes, lr 3e-4 (3000 updates there).

  python -m training.onpolicy.train --config config/onpolicy_procedural_diagnostic.py --policy BC_RUN --out RUN
"""
sim = "procedural"
actors = 2
minutes = 12
lr = 3e-4
max_steps = 3000
