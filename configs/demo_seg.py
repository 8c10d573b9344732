"""UPerNet-Swin on the offline segmentation demo, fine-tuned from a pre-trained backbone as Swin
segmenters are trained: 96x96 scenes of 2-4 handwritten digits (scikit-learn's) on textured
backgrounds, each pixel labelled with the digit whose stroke covers it or background (11 classes).
Held-out scenes use only digits the classification demo held out. Two CPU cores, no download; run in
this order (the pre-training first, then the segmentation):

  python train.py --config configs/demo.py:scene --workdir /tmp/demo_scene
  python train.py --config configs/demo_seg.py --workdir /tmp/seg --config.init_from=/tmp/demo_scene

The pre-training is the classification demo on digits drawn as the scenes draw them (a contrasting
colour on a textured background): the white-on-black demo's backbone does not know them (14% on such
digits). The backbone is the classification demo's (patch 2, embed 48, three stages, window 4): a
digit of 20-40 px spans 10-20 tokens in a scene, as the 32 px digits of the classification demo span
16. Without init_from the same model trains from scratch. Figures: docs/segmentation.md#the-demo.
"""

from configs import segmentation


def get_config():
    config = segmentation.get_config("upernet_swin_tiny_patch4_window7_224")
    config.dataset = "demo_scenes"
    config.batch_size = 16
    config.input.eval_batch_size = 40
    config.input.num_classes = 11
    config.input.reduce_zero_label = False  # background is a class here
    config.input.scale = (96, 96)
    config.input.ratio_range = (0.75, 1.25)
    config.input.crop_size = (64, 64)  # 32x32 tokens; evaluation sees the whole 96x96 scene
    config.input.cat_max_ratio = 1.0  # background covers most of every crop; mmseg's rule would reject them all
    config.input.hflip = 0.0  # digits are not mirror-symmetric
    config.input.eval_scale = (96, 96)
    config.input.eval_pad_multiple = 32
    config.input.demo_train_scenes = 2000
    config.input.demo_eval_scenes = 200
    config.model_overrides.update(dict(patch_size=2, embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12),
                                       window_size=4, drop_path_rate=0.1, channels=64, auxiliary_channels=32,
                                       auxiliary_in_index=1))
    # Background is 91% of the pixels: mmseg's class_weight at 0.2 for it gives the digits' pixels as
    # much weight in the loss as the background's.
    config.class_weight = (0.2,) + (1.0,) * 10
    config.total_steps = 1500
    config.warmup_steps = 50
    config.base_lr = 1e-3
    config.weight_decay = 0.01
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    return config
