"""Mask R-CNN and Cascade Mask R-CNN with Swin on COCO, as the official Swin detection code runs them
(SwinTransformer/Swin-Transformer-Object-Detection, mmdet 2.11): evaluation of a checkpoint on COCO
val2017 with mmdet's test pipeline and COCOeval. The argument is the detector's name
(swin_jax.models.registry.DETECTORS, or "mask_rcnn_" / "cascade_mask_rcnn_" + a backbone name).

  python train.py --config configs/detection.py:cascade_mask_rcnn_swin_tiny_patch4_window7 --workdir DIR \
      --config.init_from=cascade_mask_rcnn_swin_tiny_patch4_window7.pth --config.input.data_dir=/data/coco

data_dir holds COCO as distributed (annotations/instances_val2017.json, val2017/*.jpg); or set
--config.dataset=coco/2017 for TFDS (boxes only: bbox metrics). Metrics go to DIR/metrics.jsonl
(eval_bbox_ap, eval_segm_ap, the other ten COCOeval numbers of each, the AP of every class) and are
printed as a table. Training the detectors is not available yet: this config evaluates (eval_only).
"""

from configs import common
from swin_jax import data


def get_config(model: str = "mask_rcnn_swin_tiny_patch4_window7") -> "ml_collections.ConfigDict":  # noqa: F821
    config = common.get_config(model)
    config.task = "detection"
    config.eval_only = True
    config.dataset = "folder"
    config.batch_size = 16  # the official 8 GPUs x 2 images
    config.input = data.detection_config()
    config.input.dataset = config.get_ref("dataset")
    config.input.batch_size = config.get_ref("batch_size")
    config.input.eval_batch_size = 8  # mmdet tests one image per GPU; a multiple of the devices
    return config
