"""The `tiny` world model of docs/worldmodel.md's figures: 30 minutes on 2 CPU threads with our VAE (runs/vae).

  python -m training.worldmodel.train --config config/worldmodel_tiny_cpu.py
"""
preset = "tiny"
data = "data/wm_sim"
out = "runs/wm"
vae = "runs/vae"
minutes = 30
max_steps = 100_000       # the time budget ends the run
batch_size = 16
lr = 2e-3
warmup = 100
ema = 0.995
num_workers = 0
threads = 2
