"""On-policy training in the ground-truth (procedural) simulator, two Ray actors, 45 minutes (docs/onpolicy.md).

  python -m training.onpolicy.train --config config/onpolicy_procedural.py --policy BC_RUN --out RUN
"""
sim = "procedural"
actors = 2
minutes = 45
