"""The input pipeline: `config.input` -> per-process tf.data batches of uint8 images -> global jax.Arrays
(normalised, erased and mixed on device by `on_device.train_batch`).

The training sequence is a function of (seed, step): epoch e is this process's share shuffled with a
seed derived from (seed, e), cut to the same number of steps on every process, and every example's
augmentation is drawn from (seed, process, e, position). A run resumed at step s rebuilds the pipeline
at epoch s // steps_per_epoch and skips the steps already taken in it, so it sees exactly the batches
the uninterrupted run would have seen. Device count does not enter: a fixed global batch over the same
number of processes gives the same batches on 1 device or 256.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from swin_jax.data import sources, transforms
from swin_jax.data.config import SYNTHETIC
from swin_jax.data.host import tf
from swin_jax.data.sources import DataError

DEFAULT_SPLITS = {"folder": ("train", "val"), "demo": ("train", "test"), SYNTHETIC: ("train", "validation")}
TFDS_SPLITS = ("train", "validation")


@dataclasses.dataclass
class Input:
    """A pipeline of this process's batches and the numbers a training loop plans with."""
    dataset: tf.data.Dataset  # dicts of per-process batches: image, label (and mask for evaluation)
    num_classes: int
    num_examples: int  # in the split, all processes together
    steps: int  # training: steps per epoch; evaluation: steps for one pass
    local_batch_size: int
    build: Callable[[int], tf.data.Dataset] | None = None  # training: the stream from a given step
    class_names: tuple[str, ...] | None = None  # None: classes are known by their indices
    ground_truth: Any = None  # detection: the split's annotations (pycocotools COCO) the evaluation scores against
    category_ids: tuple[int, ...] | None = None  # detection: the annotations' category_id of each class
    skipped_files: int = 0  # folders: files left out of the split as damaged

    def starting_at(self, step: int) -> "Input":
        """The same training stream from `step` on, without opening the data again."""
        return dataclasses.replace(self, dataset=self.build(step))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        try:
            yield from self.dataset.as_numpy_iterator()
        except tf.errors.OpError as e:  # the files were checked when opened: one changed since
            reason = (e.message or type(e).__name__).strip().splitlines()[0]
            raise DataError(f"the input failed while reading: {reason}. Files are checked when a run opens its "
                            "data, and those that do not decode are skipped: run the same command to check them "
                            "again and resume from the last checkpoint") from None


def _processes(process_index, process_count):
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


def _local_batch(batch_size: int, process_count: int, field: str) -> int:
    if batch_size <= 0 or batch_size % process_count:
        raise DataError(f"config.input.{field}={batch_size} must be a positive multiple of the "
                        f"{process_count} processes")
    return batch_size // process_count


def _split_name(config, which: int) -> str:
    given = config.train_split if which == 0 else config.eval_split
    return given or DEFAULT_SPLITS.get(config.dataset, TFDS_SPLITS)[which]


def open_split(config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int):
    """This process's share of a split of the configured dataset."""
    if config.dataset == "folder":
        if not config.data_dir:
            raise DataError("config.input.dataset='folder' needs config.input.data_dir, the folder that holds "
                            "train/CLASS/IMAGE and val/CLASS/IMAGE")
        return sources.folder_split(config.data_dir, split, process_index=process_index,
                                    process_count=process_count, train_split=_split_name(config, 0),
                                    labelled=config.labelled, skip_bad_files=config.skip_bad_files)
    if config.dataset == "demo":
        limit = config.get("demo_train_examples", 0) if split == _split_name(config, 0) else 0
        return sources.demo_split(split, process_index=process_index, process_count=process_count, limit=limit,
                                  style=config.get("demo_digits", "plain"))
    return sources.tfds_split(config.dataset, split, data_dir=config.data_dir, process_index=process_index,
                              process_count=process_count, download=config.download, labelled=config.labelled)


def _options(config) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if config.threads:
        options.threading.private_threadpool_size = config.threads
    return options


def _example_seed(seed: int, process_index: int, epoch, position):
    base = tf.random.experimental.stateless_fold_in(tf.constant([seed, process_index], tf.int64), epoch)
    return tf.random.experimental.stateless_fold_in(base, position)


def train_input(config: ml_collections.ConfigDict, *, seed: int, start_step: int = 0,
                process_index: int | None = None, process_count: int | None = None) -> Input:
    """An endless stream of augmented training batches for this process, starting at `start_step`."""
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(config.batch_size, process_count, "batch_size")
    if config.dataset == SYNTHETIC:
        return _synthetic(config, local_batch, seed, start_step, process_index, train=True)

    def augment(ex):
        image = transforms.train_transform(
            ex["image"], ex["seed"], size=config.image_size, scale=tuple(config.scale),
            ratio=tuple(config.ratio), hflip=config.hflip, rand_augment=config.rand_augment,
            interpolation=config.interpolation)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    return training_stream(config, lambda index, count: open_split(config, _split_name(config, 0), index, count),
                           augment, seed=seed, start_step=start_step, process_index=process_index,
                           process_count=process_count)


def training_stream(config, open_train_split, augment, *, seed: int, start_step: int, process_index: int,
                    process_count: int) -> Input:
    """The training stream of any task: `open_train_split(reader_index, reader_count)` gives the examples,
    `augment(example with its "seed")` turns one into what the task trains on."""
    local_batch = _local_batch(config.batch_size, process_count, "batch_size")
    if config.shard not in ("process", "global"):
        raise DataError(f"config.input.shard must be 'process' or 'global', not {config.shard!r}")
    # 'process': each process reads only its share (scales to pods; the order depends on the process
    # count). 'global': each reads the whole stream and keeps its rows of every global batch, decoding
    # only those: the batches are the same for any number of processes.
    whole = config.shard == "global"
    reader_index, reader_count = (0, 1) if whole else (process_index, process_count)
    split = open_train_split(reader_index, reader_count)
    steps = split.total_examples // config.batch_size
    if steps == 0:
        raise DataError(f"the {config.dataset} training split has {split.total_examples} examples, fewer than "
                        f"one global batch (config.input.batch_size={config.batch_size})")
    step_examples = config.batch_size if whole else local_batch  # what this stream holds per step
    per_epoch = steps * step_examples  # every process takes the same number; the rest waits for next epoch
    base = split.dataset.cache() if config.cache else split.dataset
    shuffle_buffer = max(1, min(config.shuffle_buffer, split.num_examples))

    def epoch(e, start_epoch, skip_steps):
        # fold_in only replaces the second seed word, so draw an order seed from the folded pair.
        folded = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0x5EED], tf.int64), e)
        order_seed = tf.random.stateless_uniform([], folded, minval=None, maxval=None, dtype=tf.int64)
        examples = base.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
        examples = examples.take(per_epoch).enumerate()
        examples = examples.map(lambda i, ex: dict(ex, seed=_example_seed(seed, reader_index, e, i)))
        return examples.skip(tf.where(e == start_epoch, tf.constant(skip_steps * step_examples, tf.int64), 0))

    def own_rows(batch):
        return {k: v[process_index * local_batch:(process_index + 1) * local_batch] for k, v in batch.items()}

    def build(start):
        start_epoch, skip_steps = divmod(start, steps)
        dataset = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
        dataset = dataset.flat_map(lambda e: epoch(e, start_epoch, skip_steps))
        if whole:
            dataset = dataset.batch(config.batch_size, drop_remainder=True).map(own_rows).unbatch()
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(local_batch, drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(config))

    return Input(build(start_step), split.num_classes, split.total_examples, steps, local_batch, build,
                 split.class_names, skipped_files=len(split.skipped))


def eval_input(config: ml_collections.ConfigDict, *, split: str | None = None,
               process_index: int | None = None, process_count: int | None = None) -> Input:
    """One pass over an evaluation split. Every process runs the same number of batches; the last ones
    are padded with examples whose `mask` is False, so each real example counts exactly once."""
    process_index, process_count = _processes(process_index, process_count)
    local_batch = _local_batch(config.eval_batch_size or config.batch_size, process_count, "eval_batch_size")
    if config.dataset == SYNTHETIC:
        return _synthetic(config, local_batch, 0, 0, process_index, train=False)
    data = open_split(config, split or _split_name(config, 1), process_index, process_count)
    steps = math.ceil(data.max_process_examples / local_batch)

    def preprocess(ex):
        image = transforms.eval_transform(ex["image"], size=config.image_size, crop_pct=config.crop_pct,
                                          interpolation=config.interpolation)
        return {"image": image, "label": tf.cast(ex["label"], tf.int32), "mask": tf.constant(True)}

    size = config.image_size
    padding = tf.data.Dataset.from_tensors({"image": tf.zeros([size, size, 3], tf.uint8), "label": tf.constant(0),
                                            "mask": tf.constant(False)})
    base = data.dataset.cache() if config.cache else data.dataset
    dataset = base.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.concatenate(padding.repeat(steps * local_batch - data.num_examples))
    dataset = dataset.batch(local_batch, drop_remainder=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(config))
    return Input(dataset, data.num_classes, data.total_examples, steps, local_batch, class_names=data.class_names,
                 skipped_files=len(data.skipped))


def _synthetic(config, local_batch, seed, start_step, process_index, *, train: bool) -> Input:
    """Random images and labels made in memory: the model's speed without any input cost."""
    size, classes = config.image_size, config.num_classes
    examples = config.synthetic_examples if train else 2 * (config.eval_batch_size or config.batch_size)

    def batch(step):
        seeds = tf.random.experimental.stateless_split(_example_seed(seed, process_index, 0, step), 2)
        return {"image": tf.random.stateless_uniform([local_batch, size, size, 3], seeds[0], 0, 256, tf.int32),
                "label": tf.random.stateless_uniform([local_batch], seeds[1], 0, classes, tf.int32)}

    steps = examples // config.batch_size if train else 2

    def build(start):
        dataset = tf.data.Dataset.range(start, np.iinfo(np.int64).max if train else steps).map(batch)
        if not train:
            dataset = dataset.map(lambda b: dict(b, mask=tf.ones([local_batch], tf.bool)))
        dataset = dataset.map(lambda b: dict(b, image=tf.cast(b["image"], tf.uint8)))
        return dataset.prefetch(2).with_options(_options(config))

    return Input(build(start_step), classes, examples, max(steps, 1), local_batch, build if train else None)


def to_global(batches, sharding: jax.sharding.Sharding, *, ahead: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Per-process numpy batches -> global jax.Arrays laid out by `sharding` (its mesh's batch axes),
    keeping `ahead` batches in flight so the transfer overlaps the step."""
    queue = collections.deque()
    for batch in batches:
        queue.append({k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()})
        if len(queue) > ahead:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


# ---------------------------------------------------------------------------------------------------
# Semantic segmentation (mmseg's ADE20K pipeline: swin_jax.data.segmentation)

SEGMENTATION_SPLITS = {"folder": sources.SEGMENTATION_FOLDER_SPLITS, "demo_scenes": ("train", "test")}
SEGMENTATION_TFDS_SPLITS = ("train", "test")  # scene_parse150's names


def _segmentation_split_name(config, which: int) -> str:
    given = config.train_split if which == 0 else config.eval_split
    return given or SEGMENTATION_SPLITS.get(config.dataset, SEGMENTATION_TFDS_SPLITS)[which]


def open_segmentation_split(config, split: str, process_index: int, process_count: int) -> sources.Split:
    names = tuple(config.class_names) or None
    if config.dataset == "folder":
        if not config.data_dir:
            raise DataError("config.input.dataset='folder' needs config.input.data_dir, the folder that holds "
                            "images/SPLIT/NAME.jpg and annotations/SPLIT/NAME.png")
        return sources.segmentation_folder_split(config.data_dir, split, process_index=process_index,
                                                 process_count=process_count, num_classes=config.num_classes,
                                                 reduce_zero_label=config.reduce_zero_label,
                                                 ignore_index=config.ignore_index, class_names=names,
                                                 skip_bad_files=config.skip_bad_files)
    if config.dataset == "demo_scenes":
        count = config.demo_train_scenes if split == "train" else config.demo_eval_scenes
        return sources.scenes_split(split, count, size=config.demo_scene_size, process_index=process_index,
                                    process_count=process_count)
    return sources.tfds_segmentation_split(config.dataset, split, data_dir=config.data_dir,
                                           process_index=process_index, process_count=process_count,
                                           download=config.download, num_classes=config.num_classes,
                                           class_names=names)


def _label(label, config):
    """Class indices (uint8 HxW) of an encoded or decoded annotation, with mmseg's reduce_zero_label
    (0, "other", becomes the ignore index and every class moves down by one)."""
    if label.dtype == tf.string:
        label = tf.io.decode_png(label, channels=0)[..., 0]  # a 3-channel (TFDS) annotation: the first
    if config.reduce_zero_label:
        label = tf.where(label == 0, tf.constant(255, tf.uint8), label - 1)
        label = tf.where(label == 254, tf.constant(255, tf.uint8), label)
    return label


def segmentation_train_input(config: ml_collections.ConfigDict, *, seed: int, start_step: int = 0,
                             process_index: int | None = None, process_count: int | None = None) -> Input:
    """Endless batches of {"image": uint8 crop, "label": uint8 crop (ignore index where padded),
    "valid": the unpadded (h, w)}, the same resumable order as classification."""
    from swin_jax.data import segmentation

    process_index, process_count = _processes(process_index, process_count)

    def augment(ex):
        out = segmentation.train_transform(
            transforms.decode(ex["image"]), _label(ex["label"], config), ex["seed"], scale=tuple(config.scale),
            ratio_range=tuple(config.ratio_range) if config.ratio_range else None,
            crop_size=tuple(config.crop_size), cat_max_ratio=config.cat_max_ratio, hflip=config.hflip,
            photometric=config.photometric, ignore_index=config.ignore_index)
        return dict(out, label=tf.cast(out["label"], tf.uint8))

    return training_stream(config, lambda index, count: open_segmentation_split(
        config, _segmentation_split_name(config, 0), index, count), augment, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count)


def _round_up(x, multiple):
    return (x + multiple - 1) // multiple * multiple


def batched_by_shape(dataset, fill: dict, global_batch: int, process_index: int, local_batch: int):
    """Examples of varying padded shapes (each with a "key" naming its shape) -> this process's rows of
    global batches in which every image has one shape: the eval step compiles once per shape. A short batch
    is filled to the global batch with `fill`'s values (its "mask" False). Every process must read the same
    examples in the same order, so that all see the same shapes at the same steps."""
    def complete(batch):
        missing = global_batch - tf.shape(batch["mask"])[0]
        full = {k: tf.pad(batch[k], [[0, missing]] + [[0, 0]] * (len(batch[k].shape) - 1),
                          constant_values=tf.cast(v, batch[k].dtype)) for k, v in fill.items()}
        return {k: v[process_index * local_batch:(process_index + 1) * local_batch] for k, v in full.items()}

    dataset = dataset.group_by_window(key_func=lambda ex: ex["key"], window_size=global_batch,
                                      reduce_func=lambda key, group: group.batch(global_batch))
    return dataset.map(complete).prefetch(tf.data.AUTOTUNE)


def segmentation_eval_input(config: ml_collections.ConfigDict, *, split: str | None = None,
                            process_index: int | None = None, process_count: int | None = None) -> Input:
    """One pass for mmseg's evaluation: each image resized keeping its ratio to `eval_scale`, its annotation
    kept at the original resolution (where the metrics are computed). Sizes vary, so both are padded up
    to multiples of `eval_pad_multiple` and batched by padded shape: the eval step compiles once per shape,
    a small bounded set. Every process reads the whole split and keeps its rows of each global batch, so
    all processes see the same shapes in the same order; short batches are filled with masked examples.
    Batches: image, label (ignore index in the padding), valid (the resized h, w), label_size, mask."""
    from swin_jax.data import segmentation

    process_index, process_count = _processes(process_index, process_count)
    global_batch = config.eval_batch_size or config.batch_size
    local_batch = _local_batch(global_batch, process_count, "eval_batch_size")
    data = open_segmentation_split(config, split or _segmentation_split_name(config, 1), 0, 1)
    multiple, ignore = config.eval_pad_multiple, config.ignore_index

    def prepare(ex):
        label = _label(ex["label"], config)
        image = segmentation.eval_resize(transforms.decode(ex["image"]), tuple(config.eval_scale))
        size, label_size = tf.shape(image)[:2], tf.shape(label)[:2]
        padded, label_padded = _round_up(size, multiple), _round_up(label_size, multiple)
        image = tf.pad(image, [[0, padded[0] - size[0]], [0, padded[1] - size[1]], [0, 0]])
        label = tf.pad(label, [[0, label_padded[0] - label_size[0]], [0, label_padded[1] - label_size[1]]],
                       constant_values=ignore)
        key = tf.cast(tf.concat([padded, label_padded], 0) // multiple, tf.int64)
        key = ((key[0] * 1000 + key[1]) * 1000 + key[2]) * 1000 + key[3]
        return {"image": image, "label": label, "valid": size, "label_size": label_size,
                "mask": tf.constant(True), "key": key}

    dataset = data.dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = batched_by_shape(dataset, {"image": 0, "label": ignore, "valid": 1, "label_size": 1, "mask": False},
                               global_batch, process_index, local_batch).with_options(_options(config))
    steps = math.ceil(data.total_examples / global_batch)  # at least; more where shapes leave short batches
    return Input(dataset, data.num_classes, data.total_examples, steps, local_batch, class_names=data.class_names,
                 skipped_files=len(data.skipped))


# ---------------------------------------------------------------------------------------------------
# Detection (mmdet's COCO test pipeline: swin_jax.data.coco)

DETECTION_SPLITS = {"folder": ("train2017", "val2017"), "demo_scenes": ("train", "test")}
DETECTION_TFDS_SPLITS = ("train", "validation")


def _coco_folder(config) -> str:
    """config.data_dir of a COCO-format folder, required."""
    if not config.data_dir:
        raise DataError("config.input.dataset='folder' needs config.input.data_dir, the folder that holds "
                        "annotations/instances_SPLIT.json and SPLIT/IMAGE (COCO's layout)")
    return config.data_dir


def open_detection_split(config, split: str | None = None):
    """The evaluation split of config.input (a detection_config) with its ground truth: coco.DetectionSplit."""
    from swin_jax.data import coco

    split = split or config.eval_split or DETECTION_SPLITS.get(config.dataset, DETECTION_TFDS_SPLITS)[1]
    if config.dataset == "demo_scenes":
        return coco.scenes_eval_split(split, config.demo_eval_scenes, size=config.demo_scene_size)
    if config.dataset == "folder":
        return coco.folder_split(_coco_folder(config), split)
    return coco.tfds_split(config.dataset, split, data_dir=config.data_dir, download=config.download)


def open_detection_train_split(config, process_index: int, process_count: int):
    from swin_jax.data import coco

    split = config.train_split or DETECTION_SPLITS.get(config.dataset, DETECTION_TFDS_SPLITS)[0]
    if config.dataset == "folder":
        return coco.folder_train_split(_coco_folder(config), split, process_index, process_count, config.max_objects)
    if config.dataset == "demo_scenes":
        return coco.scenes_train_split(split, config.demo_train_scenes, size=config.demo_scene_size,
                                       process_index=process_index, process_count=process_count)
    return coco.tfds_train_split(config.dataset, split, data_dir=config.data_dir, download=config.download,
                                 process_index=process_index, process_count=process_count)


def detection_train_input(config: ml_collections.ConfigDict, *, seed: int, start_step: int = 0,
                          process_index: int | None = None, process_count: int | None = None) -> Input:
    """Endless batches for the detectors (`swin_jax.data.detection.train_transform`): image uint8 padded to
    pad_hw, valid, gt_boxes / gt_labels / gt_valid padded to max_objects, gt_masks where the data has
    masks, and per image the boxes clipped and dropped as the annotations were read; the same resumable
    order as the other tasks."""
    from swin_jax.data import detection

    process_index, process_count = _processes(process_index, process_count)
    opened = {}

    def open_split(index, count):
        opened["split"] = open_detection_train_split(config, index, count)
        return opened["split"]

    def augment(ex):
        split = opened["split"]
        ex = dict(split.load(ex), seed=ex["seed"])
        out = detection.train_transform(
            ex["image"], ex["boxes"], ex["labels"], ex.get("masks") if split.has_masks else None, ex["seed"],
            short_sides=tuple(config.short_sides), long_side=config.long_side,
            crop_short_sides=tuple(config.crop_short_sides), crop_range=tuple(config.crop_range), hflip=config.hflip,
            pad_hw=tuple(config.pad_hw), max_objects=config.max_objects, image_id=ex["image_id"])
        return dict(out, boxes_clipped=ex["clipped"], boxes_dropped=ex["dropped"])

    return training_stream(config, open_split, augment, seed=seed, start_step=start_step,
                           process_index=process_index, process_count=process_count)


def detection_eval_input(config: ml_collections.ConfigDict, *, split: str | None = None,
                         process_index: int | None = None, process_count: int | None = None) -> Input:
    """One pass for mmdet's COCO evaluation: each image resized keeping its ratio into `eval_scale` (mmcv's
    imrescale), padded to a multiple of `eval_pad_multiple` and batched by padded shape (one compilation
    per shape; `eval_batch_shapes` in the metrics counts them). The Input's `ground_truth` is the split's
    COCO annotations. Batches: image (uint8, padded), valid (the resized h, w), original_hw, image_id, mask."""
    from swin_jax.data import segmentation

    process_index, process_count = _processes(process_index, process_count)
    global_batch = config.eval_batch_size or config.batch_size
    local_batch = _local_batch(global_batch, process_count, "eval_batch_size")
    data = open_detection_split(config, split)
    multiple = config.eval_pad_multiple

    def prepare(ex):
        image = transforms.decode(ex["image"])
        original = tf.shape(image)[:2]
        image = segmentation.eval_resize(image, tuple(config.eval_scale))
        size = tf.shape(image)[:2]
        padded = _round_up(size, multiple)
        image = tf.pad(image, [[0, padded[0] - size[0]], [0, padded[1] - size[1]], [0, 0]])
        key = tf.cast(padded // multiple, tf.int64)
        return {"image": image, "valid": size, "original_hw": original, "image_id": tf.cast(ex["image_id"], tf.int32),
                "mask": tf.constant(True), "key": key[0] * 1_000_000 + key[1]}

    dataset = data.dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    fill = {"image": 0, "valid": 1, "original_hw": 1, "image_id": -1, "mask": False}
    dataset = batched_by_shape(dataset, fill, global_batch, process_index, local_batch).with_options(_options(config))
    steps = math.ceil(data.num_examples / global_batch)  # at least; more where shapes leave short batches
    return Input(dataset, len(data.class_names), data.num_examples, steps, local_batch, class_names=data.class_names,
                 ground_truth=data.ground_truth, category_ids=data.category_ids)
