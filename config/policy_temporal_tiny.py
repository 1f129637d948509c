"""The main job's temporal-model stage at `tiny` (training/pipeline.py, stage policy_temporal): 800 steps on one
thread, on the extractor that policy_extractor_tiny.py trained into the same run.

  python -m training.policy.train --config config/policy_temporal_tiny.py --data DIR [DIR ...] --out RUN
"""
preset = "tiny"
stage = "temporal"
max_steps = 800
threads = 1
resume = True
