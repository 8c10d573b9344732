"""Mask R-CNN-Swin on the offline digit scenes (the segmentation demo's generator): one instance per digit,
its visible strokes as the mask and their tight box, 10 classes; fine-tuned from the classification demo's
backbone, as Swin detectors start from an ImageNet one. Two CPU cores, no download; run in this order:

  python train.py --config configs/demo.py:scene --workdir /tmp/demo_scene
  python train.py --config configs/demo_det.py --workdir /tmp/det --config.init_from=/tmp/demo_scene

The backbone is the classification demo's (patch 2, embed 48, three stages, window 4): pyramid levels at
strides 2, 4, 8 and 16, anchors of 16-128 px for digits of 20-40 px. Evaluation: COCOeval on the 200
held-out scenes (boxes and masks). Figures: docs/detection.md#the-demo.
"""

from configs import detection


def get_config():
    config = detection.get_config("mask_rcnn_swin_tiny_patch4_window7")
    config.dataset = "demo_scenes"
    config.batch_size = 8
    config.input.eval_batch_size = 40
    config.input.demo_train_scenes = 2000
    config.input.demo_eval_scenes = 200
    config.input.short_sides = (80, 88, 96)  # the scenes at 0.83-1 of their size
    config.input.long_side = 1333
    config.input.crop_short_sides = ()
    config.input.hflip = 0.0  # digits are not mirror-symmetric
    config.input.pad_hw = (96, 96)
    config.input.max_objects = 4
    config.input.eval_scale = (96, 96)
    config.model_overrides.update(dict(patch_size=2, embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12),
                                       window_size=4, drop_path_rate=0.1, channels=64, fc_channels=128,
                                       mask_channels=32, rpn_train_nms_pre=500, rpn_train_max_per_img=200,
                                       rpn_nms_pre=500, rpn_max_per_img=200, rcnn_samples=64, max_per_img=20))
    config.total_steps = 1200
    config.warmup_steps = 100
    config.lr_milestones = (1000 * config.epochs // 1200,)  # epochs scaled with total_steps: step 1000
    config.base_lr = 2e-4
    config.lr_base_batch_size = 8
    config.log_every_steps = 50
    config.eval_every_steps = 400
    config.checkpoint_every_steps = 400
    return config
