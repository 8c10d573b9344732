"""swinv2_tiny_window8_256: Swin V2-T on ImageNet-1K from scratch at 256, the official recipe
(official swinv2_tiny_patch4_window8_256.yaml: V1's 300-epoch AdamW recipe, drop path 0.2; evaluation
resizes to 292 and centre-crops 256).

  python train.py --config configs/swinv2_t.py --workdir /path/to/workdir --config.input.data_dir=/path/to/tfds

Smoke test of the whole config on any machine:
  python train.py --config configs/swinv2_t.py --workdir /tmp/swinv2_t --config.dataset=synthetic \
      --config.batch_size=8 --config.total_steps=2
"""

from configs import common


def get_config():
    config = common.get_config("swinv2_tiny_window8_256")
    config.image_size = 256
    config.model_overrides.drop_path_rate = 0.2
    return config
