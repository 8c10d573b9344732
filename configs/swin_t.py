"""swin_tiny_patch4_window7_224: ImageNet-1K from scratch at 224, the official 300-epoch recipe (drop path 0.2).

  python train.py --config configs/swin_t.py --workdir /path/to/workdir --config.input.data_dir=/path/to/tfds

Smoke test of the whole config on any machine:
  python train.py --config configs/swin_t.py --workdir /tmp/swin_t --config.dataset=synthetic \
      --config.batch_size=8 --config.total_steps=2
"""

from configs import common


def get_config():
    config = common.get_config("swin_tiny_patch4_window7_224")
    config.model_overrides.drop_path_rate = 0.2
    return config
