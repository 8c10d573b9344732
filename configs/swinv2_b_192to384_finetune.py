"""swinv2_base_window12to24_192to384: fine-tune the ImageNet-22K Swin V2-B (192, window 12) on
ImageNet-1K at 384 with window 24 (official swinv2_base_patch4_window12to24_192to384_22kto1k_ft.yaml:
30 epochs, 5 warm-up, lr 2e-5 / warm-up 2e-8 / min 2e-7 per 512, weight decay 1e-8, drop path 0.2, no
layer decay, TEST.CROP False: plain resize for evaluation).

The position-bias MLP transfers as it is: nothing is resampled. The model keeps the pre-training
window in `pretrained_window_sizes` (12, 12, 12, 6), which scales its relative coordinates. The
21841-class head is narrowed to ImageNet-1K with the official map22kto1k.txt, as the official loader does.

  python -m swin_jax.convert --model swinv2_base_window12_192 \
      --checkpoint swinv2_base_patch4_window12_192_22k.pth --output /ckpt/swinv2_b_192_22k
  python train.py --config configs/swinv2_b_192to384_finetune.py --workdir /path/to/workdir \
      --config.init_from=/ckpt/swinv2_b_192_22k --config.init_class_map=/path/to/map22kto1k.txt \
      --config.input.data_dir=/path/to/tfds
"""

from configs import swinv2_b_192to256_finetune


def get_config():
    config = swinv2_b_192to256_finetune.get_config()  # the same recipe, at 384 with window 24
    config.model = "swinv2_base_window12to24_192to384"
    config.image_size = 384
    config.input.crop_pct = 1.0
    return config
