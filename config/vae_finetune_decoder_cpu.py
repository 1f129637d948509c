"""The decoder fine-tune of runs/vae (encoder and latent cache unchanged), 18 minutes on 2 CPU threads
(docs/worldmodel.md, Commands).

  python -m training.vae finetune-decoder --config config/vae_finetune_decoder_cpu.py
"""
vae = "runs/vae"
data = "data/wm_sim"
out = "runs/vae_ft"
minutes = 18
max_steps = 1_000_000     # the time budget ends the run
degrade = 0.5
threads = 2
