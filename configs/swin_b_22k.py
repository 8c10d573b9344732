"""swin_base_patch4_window7_224 pre-trained on ImageNet-22K (official swin_base_patch4_window7_224_22k:
90 epochs, 5 warm-up, lr 1.25e-4 per 512, drop path 0.2). ImageNet-22K is not in TFDS: bring it as an
image folder, DIR/train/CLASS/*.JPEG and DIR/val/CLASS/*.JPEG (21841 classes, held-out images in val).

  python train.py --config configs/swin_b_22k.py --workdir /path/to/workdir --config.input.data_dir=/data/imagenet22k
"""

from configs import common


def get_config():
    config = common.get_config("swin_base_patch4_window7_224")
    config.dataset = "folder"
    config.input.data_dir = "/data/imagenet22k"
    config.batch_size = 4096
    config.model_overrides.drop_path_rate = 0.2
    config.epochs = 90
    config.warmup_epochs = 5
    config.base_lr = 1.25e-4
    config.warmup_lr = 1.25e-7
    config.min_lr = 1.25e-6
    config.checkpoint_every_steps = 2000
    return config
