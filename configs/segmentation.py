"""The official UPerNet-Swin ADE20K recipe (SwinTransformer/Swin-Transformer-Semantic-Segmentation,
configs/swin/upernet_swin_*_512x512_160k_ade20k.py with its _base_ files, mmseg 0.11), shared by the
segmentation configs. Not run directly.

What the official run did, field by field:
  optimizer  AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, paramwise_cfg.custom_keys with
             decay_mult 0 for 'absolute_pos_embed', 'relative_position_bias_table' and 'norm'. mmcv
             matches a key as a substring of the parameter's name, so every LayerNorm (weight and bias) of
             the backbone is exempt, and nothing else: biases and the heads' BatchNorm (named 'bn')
             decay. No gradient clipping (optimizer_config = dict()).
  schedule   poly, power 1.0, min lr 0, by iteration, after a 1500-iteration linear warm-up from ratio
             1e-6 (mmcv scales the poly rate during warm-up); 160k iterations. mmcv's LrUpdaterHook sets
             the rate in before_train_iter from the iterations done, so update u runs at the rate for u
             ('timm' lr_schedule_placement, not the classification recipe's 'official').
  batch      16 (8 GPUs x 2); the lr is for 16 and scales linearly with config.batch_size.
  model      drop path 0.3; auxiliary FCN head on stage 3 with loss weight 0.4; SyncBN.
  loss       cross entropy, ignore index 255, mean over all pixels.
  data       ADE20K with reduce_zero_label; see swin_jax.data.segmentation_config.
"""

from configs import common
from swin_jax import data


def get_config(model: str = "upernet_swin_tiny") -> "ml_collections.ConfigDict":  # noqa: F821
    config = common.get_config(model)
    config.task = "segmentation"
    config.dataset = "folder"
    config.batch_size = 16
    config.input = data.segmentation_config()
    config.input.dataset = config.get_ref("dataset")
    config.input.batch_size = config.get_ref("batch_size")
    config.input.eval_batch_size = 8

    config.total_steps = 160_000
    config.log_every_steps = 50
    config.eval_every_steps = 16_000
    config.checkpoint_every_steps = 16_000

    config.base_lr = 6e-5
    config.lr_base_batch_size = 16
    config.min_lr = 0.0
    config.betas = (0.9, 0.999)
    config.weight_decay = 0.01
    config.no_decay_keys = ("absolute_pos_embed", "relative_position_bias_table", "norm")
    config.clip_grad = 0.0
    config.schedule = "poly"
    config.lr_schedule_placement = "timm"  # update u at lr(u): mmcv's runner sets the rate before each iteration
    config.poly_power = 1.0
    config.warmup_steps = 1500
    config.warmup_ratio = 1e-6
    config.auxiliary_weight = 0.4
    config.class_weight = ()  # mmseg's CrossEntropyLoss class_weight; () = none (the official runs)
    return config
