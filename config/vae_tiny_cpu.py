"""Our tiny VAE on 2 CPU threads, 26 minutes (docs/worldmodel.md, Commands).

  python -m training.vae train --config config/vae_tiny_cpu.py
"""
data = "data/wm_sim"
out = "runs/vae"
minutes = 26
max_steps = 1_000_000     # the time budget ends the run
threads = 2
