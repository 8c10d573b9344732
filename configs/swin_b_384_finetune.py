"""swin_base_patch4_window12_384: fine-tune a 224 Swin-B to 384 on ImageNet-1K (official
swin_base_patch4_window12_384_finetune: 30 epochs, 5 warm-up, lr 2e-5 per 512, weight decay 1e-8,
plain resize for evaluation). The 224 weights come from `init_from`: the bias tables are resampled
bicubically from 13x13 to 23x23 as the official code does.

  python -m swin_jax.convert --model swin_base_patch4_window7_224 --checkpoint swin_base_patch4_window7_224.pth \
      --output /ckpt/swin_b_224
  python train.py --config configs/swin_b_384_finetune.py --workdir /path/to/workdir \
      --config.init_from=/ckpt/swin_b_224 --config.input.data_dir=/path/to/tfds
"""

from configs import common


def get_config():
    config = common.get_config("swin_base_patch4_window12_384")
    config.image_size = 384
    config.model_overrides.drop_path_rate = 0.5
    config.epochs = 30
    config.warmup_epochs = 5
    config.weight_decay = 1e-8
    config.base_lr = 2e-5
    config.warmup_lr = 2e-8
    config.min_lr = 2e-7
    config.input.crop_pct = 1.0
    config.init_from = "/path/to/converted/swin_base_patch4_window7_224"
    return config
