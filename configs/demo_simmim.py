"""SimMIM pre-training of the demo's small Swin on the offline digits, labels unused: the 1437 training
digits (32x32), 60% of the 4x4-pixel cells masked, the official schedule's shape (warm-up, then a step
down by 10x late in the run). Evaluation reports the reconstruction loss on the 360 held-out digits and
puts original | masked | reconstruction into TensorBoard. About 4 to 5 minutes on two CPU cores (2026-12-07).

  python train.py --config configs/demo_simmim.py --workdir /tmp/simmim
  python train.py --config configs/demo_simmim_finetune.py --workdir /tmp/ft --config.init_from=/tmp/simmim
"""

from configs import demo, simmim



def get_config():
    config = simmim.get_config("simmim_swin_tiny_patch4_window7_224")
    # The demo classifier's backbone (configs/demo.py), so that the fine-tuning config takes it.
    config.model_overrides.update(dict(demo.get_config().model_overrides))
    config.model_overrides.drop_path_rate = 0.0  # the official pre-training's
    config.dataset = "demo"
    config.image_size = 32
    config.batch_size = 64
    config.epochs = 30
    config.warmup_epochs = 2
    config.lr_milestones = (26,)
    config.base_lr = 8e-3  # per 512: 1e-3 at batch 64, from scratch on a small model
    config.warmup_lr = 8e-6
    config.log_every_steps = 20
    config.eval_every_steps = 330  # every 15 epochs
    config.checkpoint_every_steps = 330
    config.input.hflip = 0.0  # digits are not mirror-symmetric
    config.input.mask_patch_size = 4  # 8x8 cells of 4x4 pixels, 39 of them masked
    config.input.crop_pct = 1.0
    return config
