"""The world-model stage of the pipeline's `small` preset (training/pipeline.py PRESETS: 100,000 steps of `250M`) on
GPUs, one process per GPU with torchrun (bf16 autocast and TF32 on CUDA):

  torchrun --nproc_per_node=8 -m training.worldmodel.train --config config/worldmodel_250M_gpu.py --data DIR \
      --out RUN [--vae SD_VAE_FT_MSE_DIR]
"""
preset = "250M"
max_steps = 100_000
resume = True
