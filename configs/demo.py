"""A small Swin on the offline demo dataset (scikit-learn's handwritten digits, 32x32), sized for two
CPU cores: a few minutes to >90% top-1 on the 360 held-out digits, no download.

  python train.py --config configs/demo.py --workdir /tmp/demo
  python train.py --config configs/demo.py:scene --workdir /tmp/demo_scene   # the backbone of configs/demo_seg.py

`:scene` draws each digit as the segmentation demo's scenes do (a contrasting colour on a textured,
noisy background) instead of white on black.
"""

from configs import common


def get_config(digits: str = "plain"):
    config = common.get_config("swin_tiny_patch4_window7_224")
    config.dataset = "demo"
    config.input.demo_digits = digits
    config.image_size = 32
    config.batch_size = 64
    config.model_overrides.update(dict(patch_size=2, embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12),
                                       window_size=4, drop_path_rate=0.1))
    config.epochs = 30
    config.warmup_epochs = 2
    config.base_lr = 8e-3  # per 512 images: 1e-3 at batch 64
    config.warmup_lr = 8e-6
    config.min_lr = 8e-5
    config.log_every_steps = 10
    config.eval_every_steps = 110  # every 5 epochs
    config.checkpoint_every_steps = 500
    # Digits are not mirror-symmetric and are small: gentler augmentation than ImageNet's.
    config.input.hflip = 0.0
    config.input.scale = (0.6, 1.0)
    config.input.rand_augment = "rand-m5-n1-mstd0.5"
    config.input.random_erase = 0.0
    config.input.mixup_alpha = 0.0
    config.input.cutmix_alpha = 0.0
    config.input.crop_pct = 1.0
    if digits == "scene":
        # Coloured digits on textured backgrounds are harder than white on black: twice the epochs, and
        # no RandAugment (the model underfits: 50% held out after 30 epochs with it).
        config.epochs = 60
        config.input.rand_augment = ""
    return config
