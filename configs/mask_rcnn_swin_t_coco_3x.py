"""`configs/detection.py:mask_rcnn_swin_tiny_patch4_window7`: the official recipe (see there).

  python train.py --config configs/mask_rcnn_swin_t_coco_3x.py --workdir DIR --config.init_from=IMAGENET.pth \
      --config.input.data_dir=/data/coco
"""

from configs import detection


def get_config():
    return detection.get_config("mask_rcnn_swin_tiny_patch4_window7")
