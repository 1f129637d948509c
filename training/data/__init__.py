"""PyTorch data pipeline over comma2k19-layout segments (real or simulated).

  segments.py      find segments, deterministic train/val split by route name, per-segment camera + calibration
  frames.py        video frame -> calibrated model frame at the world model's resolution
  latent_cache.py  encode every frame once with the frozen VAE into memory-mappable .npy files
  dataset.py       windows of frames/latents + poses + plan targets + future anchors for the world model
"""
