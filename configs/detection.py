"""Mask R-CNN and Cascade Mask R-CNN with Swin on COCO, trained and evaluated as the official Swin detection
code does (SwinTransformer/Swin-Transformer-Object-Detection, mmdet 2.11, configs/swin/*_mstrain_480-800_*).
The argument is the detector's name (swin_jax.models.registry.DETECTORS, or "mask_rcnn_" /
"cascade_mask_rcnn_" + a backbone name), optionally with ",1x" for the 12-epoch schedule.

  python train.py --config configs/detection.py:mask_rcnn_swin_tiny_patch4_window7 --workdir DIR \
      --config.init_from=swin_tiny_patch4_window7_224.pth --config.input.data_dir=/data/coco

  recipe     AdamW lr 1e-4 for batch 16 (8 GPUs x 2), betas (0.9, 0.999), weight decay 0.05 except
             absolute_pos_embed, relative_position_bias_table and norms (mmcv's custom_keys); no clipping.
  schedule   36 epochs (3x), lr x 0.1 after epochs 27 and 33 (1x: 12 epochs, 8 and 11), linear warm-up
             over 500 iterations from 0.001 of the rate (mmcv's step policy, set before each iteration).
  model      drop path 0.2 (Cascade Swin-B 0.3); the backbone from an ImageNet checkpoint via init_from;
             Cascade: 4conv1fc heads with BatchNorm over the global batch (SyncBN), GIoU x 10.
  input      the 3x multi-scale pipeline (swin_jax.data.detection): flip 0.5; resize to (1333, 480..800)
             or resize to (1333, 400 | 500 | 600), crop 384..600, resize to (1333, 480..800); padded to
             1344 x 1344 with up to 100 objects per image.

data_dir holds COCO as distributed (annotations/instances_{train,val}2017.json, train2017/, val2017/);
--config.dataset=coco/2017 reads TFDS instead (boxes only: the mask heads do not train, bbox metrics).
The official figures to expect (val2017, box AP / mask AP): Mask R-CNN Swin-T 3x 46.0 / 41.6, Swin-S 3x
48.5 / 43.3; Cascade Swin-T 3x 50.4 / 43.7, Swin-S 51.9 / 45.0, Swin-B 51.9 / 45.0. Metrics go to
DIR/metrics.jsonl (eval_bbox_ap, eval_segm_ap, the other COCOeval numbers, the AP of every class).
With --config.eval_only=True and init_from an official detection checkpoint it evaluates that checkpoint.
"""

from configs import common
from swin_jax import data


def get_config(arg: str = "mask_rcnn_swin_tiny_patch4_window7") -> "ml_collections.ConfigDict":  # noqa: F821
    model, _, schedule = arg.partition(",")
    config = common.get_config(model)
    config.task = "detection"
    config.dataset = "folder"
    config.batch_size = 16  # the official 8 GPUs x 2 images
    config.input = data.detection_config()
    config.input.dataset = config.get_ref("dataset")
    config.input.batch_size = config.get_ref("batch_size")
    config.input.eval_batch_size = 8  # mmdet tests one image per GPU; a multiple of the devices
    config.base_lr = 1e-4
    config.lr_base_batch_size = 16
    config.weight_decay = 0.05
    config.no_decay_keys = ("absolute_pos_embed", "relative_position_bias_table", "norm")
    config.clip_grad = 0.0
    config.schedule = "multistep"
    config.lr_schedule_placement = "timm"  # mmcv's runner sets the rate before each iteration
    config.epochs, config.lr_milestones = (12, (8, 11)) if schedule == "1x" else (36, (27, 33))
    config.lr_gamma = 0.1
    config.warmup_steps = 500
    config.warmup_lr = config.get_ref("base_lr") * 0.001  # mmcv's warmup_ratio: follows any base_lr
    config.eval_every_steps = 0  # once per epoch, as mmdet's EvalHook
    return config
