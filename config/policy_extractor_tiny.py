"""The main job's off-policy extractor stage at `tiny` (training/pipeline.py, stage policy_extractor): 3000 steps
with photometric augmentation on one thread (one is faster than two at this size).

  python -m training.policy.train --config config/policy_extractor_tiny.py --data DIR [DIR ...] --out RUN
"""
preset = "tiny"
stage = "extractor"
max_steps = 3000
augment = True
threads = 1
resume = True
