"""swin_large_patch4_window7_224: ImageNet-1K from scratch at 224, the official 300-epoch recipe (drop path 0.5).

  python train.py --config configs/swin_l.py --workdir /path/to/workdir --config.input.data_dir=/path/to/tfds

Smoke test of the whole config on any machine:
  python train.py --config configs/swin_l.py --workdir /tmp/swin_l --config.dataset=synthetic \
      --config.batch_size=8 --config.total_steps=2
"""

from configs import common


def get_config():
    config = common.get_config("swin_large_patch4_window7_224")
    config.model_overrides.drop_path_rate = 0.5
    return config
