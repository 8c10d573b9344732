"""`config.input`: what the input pipeline reads and how it augments. Importing it needs no TensorFlow,
so that configs load (and report their errors) without starting it."""

from __future__ import annotations

import ml_collections

SYNTHETIC = "synthetic"


def default_config() -> ml_collections.ConfigDict:
    """`config.input` of the official ImageNet-1K recipe at 224; configs override what differs."""
    c = ml_collections.ConfigDict()
    c.dataset = "imagenet2012"  # a TFDS name, 'folder' (data_dir/{train,val}/CLASS/IMAGE), 'demo' or 'synthetic'
    c.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir, or the image folder root
    c.train_split = ""  # '' = the source's usual name ('train')
    c.eval_split = ""  # '' = 'validation' (TFDS), 'val' (folder), 'test' (demo)
    c.download = False  # let TFDS download and prepare a dataset that needs no manual step
    c.batch_size = 1024  # global, over all processes
    c.eval_batch_size = 0  # 0 = batch_size
    c.image_size = 224
    c.shuffle_buffer = 10_000
    c.shard = "process"  # 'process': each reads its share; 'global': same batches for any process count
    c.cache = False  # keep the (encoded) split in memory after the first epoch
    # Image folders: files that do not decode are skipped, each named in the log and counted in
    # metrics.jsonl (train_skipped_files, eval_skipped_files); False: the run stops, naming them.
    c.skip_bad_files = True
    c.threads = 0  # tf.data private thread pool per process; 0 = TensorFlow's default
    # Training augmentation (timm create_transform with the Swin config); erasing happens on device.
    c.scale = (0.08, 1.0)
    c.ratio = (3 / 4, 4 / 3)
    c.hflip = 0.5
    c.rand_augment = "rand-m9-mstd0.5-inc1"  # timm's RandAugment string; '' = off
    c.random_erase = 0.25
    c.random_erase_mode = "pixel"
    c.interpolation = "bicubic"
    # Mixup / CutMix / label smoothing, applied on device to the global batch.
    c.mixup_alpha = 0.8
    c.cutmix_alpha = 1.0
    c.mixup_prob = 1.0
    c.mixup_switch_prob = 0.5
    c.label_smoothing = 0.1
    # Evaluation: shorter side to int(size / crop_pct), centre crop; 1.0 = plain resize; 0 = the official
    # rule for image_size (transforms.official_crop_pct: 0.875, a plain resize from 384 on).
    c.crop_pct = 0.0
    # Synthetic data: classes and the size of an epoch, so epoch-based schedules still work. Its
    # evaluation split is two batches: it exercises the code, its numbers mean nothing.
    c.num_classes = 1000
    c.synthetic_examples = 1_281_167
    c.demo_train_examples = 0  # dataset 'demo': > 0 trains on the first N of the 1437 training digits only
    # dataset 'demo': 'plain' (white on black) or 'scene' (each digit drawn as the segmentation demo's
    # scenes draw them: a contrasting colour on a textured, noisy background)
    c.demo_digits = "plain"
    # SimMIM pre-training (task 'simmim'): the official MaskGenerator's cells and ratio; previews of
    # original | masked | reconstruction in TensorBoard at every evaluation.
    c.labelled = True  # False: images without labels (an image folder of any layout, TFDS with `image` only)
    c.mask_patch_size = 32
    c.mask_ratio = 0.6
    c.preview_images = 4
    c.lock()  # a misspelt field is an error, not a silently added one
    return c


def segmentation_config() -> ml_collections.ConfigDict:
    """`config.input` of mmseg's ADE20K recipe as the official Swin configs use it
    (configs/_base_/datasets/ade20k.py): 512x512 crops of images rescaled from (2048, 512) by 0.5-2."""
    c = ml_collections.ConfigDict()
    # A TFDS name with image and annotation features (scene_parse150), 'folder'
    # (data_dir/images/SPLIT/NAME.jpg + data_dir/annotations/SPLIT/NAME.png, as ADEChallengeData2016)
    # or 'demo_scenes' (digit scenes made in memory).
    c.dataset = "folder"
    c.data_dir = ml_collections.config_dict.placeholder(str)
    # Folders: pairs that do not decode, or whose annotation is not the size of its image, are skipped,
    # each named in the log and counted in metrics.jsonl; False: the run stops, naming them.
    c.skip_bad_files = True
    c.train_split = ""  # '' = 'training' (folder), 'train' (TFDS, demo)
    c.eval_split = ""  # '' = 'validation' (folder), 'test' (TFDS, demo)
    c.download = False
    c.batch_size = 16  # global
    c.eval_batch_size = 0  # 0 = batch_size
    c.shuffle_buffer = 1000
    c.shard = "process"
    c.cache = False
    c.threads = 0
    c.num_classes = 150
    c.class_names = ()  # () = ADE20K's for 150 classes (the demo's own), else indices
    c.reduce_zero_label = True  # ADE20K: 0 ("other") is ignored, classes 1..150 become 0..149
    c.ignore_index = 255
    # Training: mmseg's Resize(img_scale, ratio_range) -> RandomCrop(cat_max_ratio) -> RandomFlip ->
    # PhotoMetricDistortion -> Normalize -> Pad(crop, 0 / ignore_index).
    c.scale = (2048, 512)
    c.ratio_range = (0.5, 2.0)
    c.crop_size = (512, 512)
    c.cat_max_ratio = 0.75
    c.hflip = 0.5
    c.photometric = True
    # Evaluation: keep-ratio resize to eval_scale, whole-image inference, metrics at the annotation's size;
    # images and annotations padded to multiples of eval_pad_multiple (one compilation per padded shape).
    c.eval_scale = (2048, 512)
    c.eval_pad_multiple = 128
    c.preview_images = 4  # held-out images shown in TensorBoard at every evaluation
    # The offline demo (dataset 'demo_scenes').
    c.demo_scene_size = 96
    c.demo_train_scenes = 2000
    c.demo_eval_scenes = 200
    c.lock()
    return c


def detection_config() -> ml_collections.ConfigDict:
    """`config.input` of mmdet's COCO instance pipeline as the official Swin detection configs use it
    (configs/_base_/datasets/coco_instance.py and the configs/swin/ files)."""
    c = ml_collections.ConfigDict()
    # 'folder': a COCO-format folder, data_dir/annotations/instances_SPLIT.json with the images in
    # data_dir/SPLIT/ (COCO's own layout); or a TFDS name with image, image/id and objects (coco/2017:
    # boxes only, so only bbox metrics).
    c.dataset = "folder"
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.train_split = ""  # '' = 'train2017' (folder), 'train' (TFDS)
    c.eval_split = ""  # '' = 'val2017' (folder), 'validation' (TFDS)
    c.download = False
    c.batch_size = 16  # global
    c.eval_batch_size = 0  # 0 = batch_size
    c.threads = 0
    c.num_classes = 80  # set from the data: the annotation file's categories, or TFDS's labels
    # Evaluation: keep-ratio resize into eval_scale (w, h), normalise, zero padding to a multiple of
    # eval_pad_multiple. 32 is mmdet's (the official figures); a larger multiple gives fewer padded shapes,
    # so fewer compilations, at a small cost in agreement with mmdet near the right and bottom edges.
    c.eval_scale = (1333, 800)
    c.eval_pad_multiple = 32
    c.preview_images = 4  # held-out images with their detections in TensorBoard at every evaluation
    # Training: the official 3x multi-scale pipeline (swin_jax.data.detection): flip, then either a resize
    # to (long_side, one of short_sides) or a resize to one of crop_short_sides, a crop of crop_range and
    # a resize as the first; crop_short_sides () keeps only the first. Every image padded to pad_hw,
    # its objects to max_objects (an image with more is an error that names it).
    c.short_sides = tuple(range(480, 801, 32))
    c.long_side = 1333
    c.crop_short_sides = (400, 500, 600)
    c.crop_range = (384, 600)
    c.hflip = 0.5
    c.pad_hw = (1344, 1344)
    c.max_objects = 100
    c.shuffle_buffer = 10_000
    c.shard = "process"
    c.cache = False
    # The offline demo (dataset 'demo_scenes'): digit scenes, one instance per digit.
    c.demo_scene_size = 96
    c.demo_train_scenes = 2000
    c.demo_eval_scenes = 200
    c.lock()
    return c
