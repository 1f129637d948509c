"""The world model of "Learning to Drive from a World Model" (arXiv:2504.19077, §4).

  dit.py         video DiT over VAE latents (adaLN-Zero, frame-causal mask, future anchors), KV cache, rectified-flow loss;
                 WarpDenoiserDiT, tiny's variant (denoiser output around the pose-warped previous frame)
  plan_head.py   Plan Head: 5-hypothesis Laplace trajectory on T_IDXS from the current frame's tokens
  sample.py      autoregressive Euler sampling, with and without the KV cache
  train.py       python -m training.worldmodel.train (on the shared loop training/trainer.py; validation)
  convert_checkpoint.py  python -m training.worldmodel.convert_checkpoint: old run configs -> the current format
  evaluate.py    rollout PSNR/SSIM vs copy-last and the VAE floor, plan ADE/FDE, pose controllability
  rollout.py     python -m training.worldmodel.rollout: ground truth | generated video with the plan drawn
"""
