"""`configs/detection.py:cascade_mask_rcnn_swin_base_patch4_window7`: the official recipe (see there).

  python train.py --config configs/cascade_mask_rcnn_swin_b_coco_3x.py --workdir DIR --config.init_from=IMAGENET.pth \
      --config.input.data_dir=/data/coco
"""

from configs import detection


def get_config():
    return detection.get_config("cascade_mask_rcnn_swin_base_patch4_window7")
