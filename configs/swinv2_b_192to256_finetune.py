"""swinv2_base_window12to16_192to256: fine-tune the ImageNet-22K Swin V2-B (192, window 12) on
ImageNet-1K at 256 with window 16 (official swinv2_base_patch4_window12to16_192to256_22kto1k_ft.yaml:
30 epochs, 5 warm-up, lr 2e-5 / warm-up 2e-8 / min 2e-7 per 512, weight decay 1e-8, drop path 0.2, no
layer decay; evaluation resizes to 292 and centre-crops 256).

The position-bias MLP transfers as it is: nothing is resampled. The model keeps the pre-training
window in `pretrained_window_sizes` (12, 12, 12, 6), which scales its relative coordinates. The
21841-class head is narrowed to ImageNet-1K with the official map22kto1k.txt, as the official loader does.

  python -m swin_jax.convert --model swinv2_base_window12_192 \
      --checkpoint swinv2_base_patch4_window12_192_22k.pth --output /ckpt/swinv2_b_192_22k
  python train.py --config configs/swinv2_b_192to256_finetune.py --workdir /path/to/workdir \
      --config.init_from=/ckpt/swinv2_b_192_22k --config.init_class_map=/path/to/map22kto1k.txt \
      --config.input.data_dir=/path/to/tfds
"""

from configs import common


def get_config():
    config = common.get_config("swinv2_base_window12to16_192to256")
    config.image_size = 256
    config.model_overrides.drop_path_rate = 0.2
    config.epochs = 30
    config.warmup_epochs = 5
    config.weight_decay = 1e-8
    config.base_lr = 2e-5
    config.warmup_lr = 2e-8
    config.min_lr = 2e-7
    config.init_from = "/path/to/converted/swinv2_base_window12_192_22k"
    config.init_class_map = "/path/to/map22kto1k.txt"
    return config
