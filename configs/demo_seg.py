"""A small UPerNet-Swin trained from scratch on the offline segmentation demo: 96x96 scenes of 2-4
handwritten digits (scikit-learn's) on textured backgrounds, each pixel labelled with the digit whose
stroke covers it or background (11 classes). Held-out scenes use digits the training scenes never do.
Sized for two CPU cores: about ten minutes, no download.

  python train.py --config configs/demo_seg.py --workdir /tmp/seg
"""

from configs import segmentation


def get_config():
    config = segmentation.get_config("upernet_swin_tiny_patch4_window7_224")
    config.dataset = "demo_scenes"
    config.batch_size = 16
    config.input.eval_batch_size = 40
    config.input.num_classes = 11
    config.input.reduce_zero_label = False  # background is a class here
    config.input.scale = (96, 96)
    config.input.ratio_range = (0.75, 1.5)
    config.input.crop_size = (96, 96)
    config.input.cat_max_ratio = 1.0  # background covers most of every crop; mmseg's rule would reject them all
    config.input.hflip = 0.0  # digits are not mirror-symmetric
    config.input.eval_scale = (96, 96)
    config.input.eval_pad_multiple = 32
    config.input.demo_train_scenes = 2000
    config.input.demo_eval_scenes = 200
    # Patch 4 (24x24 tokens) runs at about 65 scenes/s on two cores, patch 2 at 37; the rest of the
    # budget goes into steps.
    config.model_overrides.update(dict(patch_size=4, embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16),
                                       window_size=6, drop_path_rate=0.0, channels=64, auxiliary_channels=32))
    # Background is 91% of the pixels: mmseg's class_weight at 0.2 for it gives the digits' pixels as
    # much weight in the loss as the background's.
    config.class_weight = (0.2,) + (1.0,) * 10
    config.total_steps = 2000
    config.warmup_steps = 100
    config.base_lr = 2e-3  # from scratch: far above the fine-tuning recipe's 6e-5
    config.weight_decay = 0.01
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    return config
