"""Where examples come from: TFDS datasets, image folders and the offline demo dataset.

Every source hands the pipeline the same thing, a `Split`: this process's share of one split as a
`tf.data.Dataset` of {"image": encoded bytes or uint8 HxWx3, "label": int64} in a fixed order, plus
the counts the pipeline needs to give every process the same number of steps.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os

import numpy as np

from swin_jax.data.host import tf

log = logging.getLogger(__name__)

# Formats TensorFlow's decoders read; anything else in a folder is reported and skipped.
DECODABLE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
DEMO_IMAGE_SIZE = 32
DEMO_TEST_EXAMPLES = 360


class DataError(ValueError):
    """Data that cannot be used as configured; the message names the dataset, folder or file."""


@dataclasses.dataclass
class Split:
    dataset: tf.data.Dataset  # this process's examples, in a fixed order
    num_examples: int  # in this process's share
    max_process_examples: int  # the largest share over all processes (equal step counts)
    total_examples: int  # in the whole split, over all processes
    num_classes: int
    class_names: tuple[str, ...] | None = None
    skipped: tuple[str, ...] = ()  # "PATH: why" of each file left out as damaged


def _skip_or_stop(bad: list[tuple[str, str]], total: int, where: str, skip: bool) -> None:
    """Bad files of a folder: each logged and left out, or, with config.input.skip_bad_files=False, an
    error naming them."""
    if not bad:
        return
    if not skip:
        raise DataError(f"{where}: {len(bad)} of {total} files cannot be used (config.input.skip_bad_files=False): " +
                        "; ".join(f"{path}: {why}" for path, why in bad[:5]) + ("; ..." if len(bad) > 5 else ""))
    for path, why in bad:
        log.warning("skipping %s: %s", path, why)
    log.warning("skipped %d of %d files in %s that cannot be used", len(bad), total, where)
    if len(bad) == total:
        raise DataError(f"{where}: none of its {total} files can be used, e.g. {bad[0][0]}: {bad[0][1]}")


def _shares(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Sizes of this process's share and of the largest share when n examples are dealt out evenly."""
    return n // process_count + (process_index < n % process_count), math.ceil(n / process_count)


# ---------------------------------------------------------------------------------------------------
# TFDS


def _not_prepared_message(builder, name: str, data_dir: str | None) -> str:
    where = data_dir or builder.data_dir_root
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        manual = os.path.join(where, "downloads", "manual")
        return (f"TFDS dataset {name!r} is not prepared in {where}. It needs a manual download:"
                f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.rstrip()}\n"
                f"Put those files in {manual} and run\n"
                f"  tfds build {name} --data_dir={where} --manual_dir={manual}")
    return (f"TFDS dataset {name!r} is not prepared in {where}. On a machine with internet run\n"
            f"  tfds build {name} --data_dir={where}\n"
            f"or set config.input.download=True to fetch it at start-up.")


def tfds_examples(name: str, split: str, *, data_dir: str | None, process_index: int, process_count: int,
                   download: bool, fields: dict[str, str], others: str, kind: str):
    """This process's share of a TFDS split, images left encoded, features renamed {ours: theirs}; with
    the counts the pipeline needs and the dataset's features."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset {name!r}: not a TFDS dataset name, nor {others} "
                        "(see `tfds.list_builders()` for the TFDS names)") from None
    # Under tfds.testing.mock_data the builder reports not prepared but serves generated examples.
    if not _is_mocked() and not builder.is_prepared():
        if not download:
            raise DataError(_not_prepared_message(builder, name, data_dir))
        builder.download_and_prepare()
    features = builder.info.features
    if any(f not in features for f in fields.values()):
        wanted = " and ".join(repr(f) for f in fields.values())
        raise DataError(f"TFDS dataset {name!r} has no {wanted} features ({list(features)}); {kind}")
    splits = builder.info.splits
    if splits and split not in splits:
        raise DataError(f"TFDS dataset {name!r} has no split {split!r}; it has {sorted(splits)}")
    shard = tfds.even_splits(split, n=process_count)[process_index]
    images = {f: tfds.decode.SkipDecoding() for f in fields.values() if isinstance(features[f], tfds.features.Image)}
    dataset = builder.as_dataset(split=shard, shuffle_files=False, decoders=images,
                                 read_config=tfds.ReadConfig(add_tfds_id=False))
    dataset = dataset.map(lambda ex: {ours: ex[theirs] for ours, theirs in fields.items()})
    if splits:
        total = splits[split].num_examples
        local, largest = _shares(total, process_index, process_count)
    else:  # mocked data: every share is the whole mock split
        local = largest = total = int(dataset.cardinality())
    return dataset, local, largest, total, features


def tfds_split(name: str, split: str, *, data_dir: str | None, process_index: int, process_count: int,
               download: bool = False, labelled: bool = True) -> Split:
    """A TFDS image classification split; `labelled=False` needs only an `image` feature (every label 0:
    SimMIM pre-training)."""
    fields = {"image": "image", "label": "label"} if labelled else {"image": "image"}
    dataset, local, largest, total, features = tfds_examples(
        name, split, data_dir=data_dir, process_index=process_index, process_count=process_count, download=download,
        fields=fields, others="'folder', 'demo' or 'synthetic'",
        kind="only image classification datasets can be used" if labelled else "an image feature is needed")
    if not labelled:
        return Split(dataset.map(lambda ex: {**ex, "label": tf.constant(0, tf.int64)}), local, largest, total, 1)
    return Split(dataset, local, largest, total, features["label"].num_classes, tuple(features["label"].names))


def _is_mocked() -> bool:
    import tensorflow_datasets as tfds

    # mock_data patches DatasetBuilder.as_dataset with a function of its testing module.
    return tfds.core.DatasetBuilder.as_dataset.__module__.startswith("tensorflow_datasets.testing")


# ---------------------------------------------------------------------------------------------------
# Image folders: root/{train,val}/CLASS/IMAGE


def _check_image(path: str) -> str | None:
    """Why the file cannot be trained on, or None. Decodes fully (at 1/8 scale for JPEGs) so a truncated
    file is caught here and not hours into training."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported image format {image.format}"
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as e:  # PIL raises many types for bad files; each is a reason to skip
        return f"{type(e).__name__}: {e}"
    return None


def _list_images(directory: str, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(directory, name)
        for root, _, files in sorted(os.walk(folder)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file))
                    labels.append(label)
    return paths, labels


def folder_classes(root: str, train_split: str = "train") -> list[str]:
    train_dir = os.path.join(root, train_split)
    if not os.path.isdir(train_dir):
        raise DataError(f"image folder {train_dir} does not exist; expected {root}/{train_split}/CLASS/IMAGE")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if not classes:
        raise DataError(f"image folder {train_dir} has no class sub-folders")
    return classes


def folder_split(root: str, split: str, *, process_index: int, process_count: int,
                 train_split: str = "train", check_workers: int | None = None, labelled: bool = True,
                 skip_bad_files: bool = True) -> Split:
    """One split of root/{train,val}/CLASS/IMAGE. Classes are the sorted sub-folders of the train split,
    so labels agree between splits; unreadable files are skipped with a warning naming each one (or,
    with `skip_bad_files=False`, an error).
    `labelled=False` takes every image under root/SPLIT, in sub-folders or not, with label 0 (SimMIM)."""
    classes = folder_classes(root, train_split) if labelled else [""]
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
        raise DataError(f"image folder {directory} does not exist")
    present = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    unknown = sorted(set(present) - set(classes)) if labelled else []
    if unknown:
        raise DataError(f"classes {unknown} are in {directory} but not in {os.path.join(root, train_split)}; "
                        "labels come from the train classes, so every class must have training images")
    paths, labels = _list_images(directory, classes)
    if not paths:
        raise DataError(f"image folder {directory} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    # Every process checks the full list so that all agree on the examples and step counts.
    with concurrent.futures.ThreadPoolExecutor(check_workers or min(32, (os.cpu_count() or 1) * 4)) as pool:
        problems = list(pool.map(_check_image, paths))
    bad = [(p, why) for p, why in zip(paths, problems) if why]
    _skip_or_stop(bad, len(paths), f"image folder {directory}", skip_bad_files)
    keep = [i for i, why in enumerate(problems) if not why]
    paths = np.array(paths)[keep][process_index::process_count]
    labels = np.array(labels, np.int64)[keep][process_index::process_count]
    local, largest = _shares(len(keep), process_index, process_count)
    dataset = tf.data.Dataset.from_tensor_slices({"path": paths, "label": labels})
    dataset = dataset.map(lambda ex: {"image": tf.io.read_file(ex["path"]), "label": ex["label"]})
    return Split(dataset, local, largest, len(keep), len(classes), tuple(classes) if labelled else None,
                 tuple(f"{p}: {why}" for p, why in bad))


# ---------------------------------------------------------------------------------------------------
# The offline demo dataset: scikit-learn's handwritten digits, upsampled


DEMO_DIGIT_STYLES = ("plain", "scene")


def demo_arrays(split: str, style: str = "plain") -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits shipped inside scikit-learn, upsampled (bicubic) to 32x32 RGB uint8, with a
    fixed split: 360 test images, 1437 train images. `style` "plain" draws them white on black, "scene"
    as the segmentation demo's scenes do (`scenes.digit_arrays`)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise DataError(f"the demo dataset has splits 'train' and 'test', not {split!r}")
    if style not in DEMO_DIGIT_STYLES:
        raise DataError(f"config.input.demo_digits={style!r}: expected one of {', '.join(DEMO_DIGIT_STYLES)}")
    if style == "scene":
        from swin_jax.data import scenes

        images, labels = scenes.digit_arrays(split, DEMO_IMAGE_SIZE)
        return images, labels.astype(np.int64)
    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((DEMO_IMAGE_SIZE,) * 2, Image.BICUBIC)) for im in small])
    images = np.repeat(big[..., None], 3, axis=-1)
    order = np.random.RandomState(0).permutation(len(images))
    take = order[:DEMO_TEST_EXAMPLES] if split == "test" else order[DEMO_TEST_EXAMPLES:]
    return images[take], digits.target[take].astype(np.int64)


def demo_split(split: str, *, process_index: int, process_count: int, limit: int = 0, style: str = "plain") -> Split:
    """The demo digits of `split` in `style` (`demo_arrays`); `limit` > 0 keeps the first `limit` of them
    (a fixed subset: the labelled share of a fine-tuning experiment)."""
    images, labels = demo_arrays(split, style)
    if limit < 0 or limit > len(images):
        raise DataError(f"the demo {split} split has {len(images)} images; cannot keep {limit} of them")
    if limit:
        images, labels = images[:limit], labels[:limit]
    local, largest = _shares(len(images), process_index, process_count)
    dataset = tf.data.Dataset.from_tensor_slices({"image": images[process_index::process_count],
                                                  "label": labels[process_index::process_count]})
    return Split(dataset, local, largest, len(images), 10)


# ---------------------------------------------------------------------------------------------------
# Segmentation: {"image": encoded bytes or uint8 HxWx3, "label": encoded PNG or uint8 HxW}

SEGMENTATION_FOLDER_SPLITS = ("training", "validation")  # ADEChallengeData2016's folder names


def tfds_segmentation_split(name: str, split: str, *, data_dir: str | None, process_index: int,
                            process_count: int, download: bool = False, num_classes: int,
                            class_names=None) -> Split:
    """A TFDS segmentation dataset with `image` and `annotation` features (scene_parse150). Its
    annotations are 3-channel PNGs; the class index is the first channel. (TFDS's scene_parse150 holds
    the 2017 challenge's instance annotations, not ADEChallengeData2016's semantic ones that the official
    numbers use: for those, point the 'folder' source at ADEChallengeData2016.)"""
    dataset, local, largest, total, _ = tfds_examples(
        name, split, data_dir=data_dir, process_index=process_index, process_count=process_count, download=download,
        fields={"image": "image", "label": "annotation"}, others="'folder' or 'demo_scenes'",
        kind="a segmentation dataset is needed")
    return Split(dataset, local, largest, total, num_classes, class_names)


def _stems(directory: str, extensions) -> dict[str, str]:
    found = {}
    for root, _, files in sorted(os.walk(directory)):
        for file in sorted(files):
            stem, ext = os.path.splitext(file)
            if ext.lower() in extensions:
                found[os.path.relpath(os.path.join(root, stem), directory)] = os.path.join(root, file)
    return found


def _check_pair(image_path: str, label_path: str, num_classes: int, reduce_zero_label: bool,
                ignore_index: int) -> tuple[str, str, bool] | None:
    """(the file, why the pair cannot be trained on, whether that is damage to the file rather than
    settings that do not fit the dataset), or None."""
    from PIL import Image

    why = _check_image(image_path)
    if why:
        return image_path, why, True
    try:
        with Image.open(image_path) as image:
            image_size = image.size
        with Image.open(label_path) as label:
            if label.mode not in ("L", "P"):
                return (label_path, f"annotation has mode {label.mode} ({len(label.getbands())} channels); a "
                        "single-channel PNG of class indices is expected", False)
            if label.size != image_size:
                return (label_path, f"annotation is {label.size[0]}x{label.size[1]} but its image {image_path} "
                        f"is {image_size[0]}x{image_size[1]}", True)
            values = np.unique(np.asarray(label))
    except Exception as e:  # PIL raises many types for bad files
        return label_path, f"not readable ({type(e).__name__}: {e})", True
    if reduce_zero_label:
        values = np.where(values == 0, 255, values - 1)
        values = np.where(values == 254, 255, values)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        shown = ", ".join(str(v + 1 if reduce_zero_label else v) for v in bad[:8])
        return (label_path, f"class values {shown} are not below num_classes={num_classes}"
                f"{' (after reduce_zero_label)' if reduce_zero_label else ''} nor the ignore index {ignore_index}", False)
    return None


def segmentation_folder_split(root: str, split: str, *, process_index: int, process_count: int, num_classes: int,
                              reduce_zero_label: bool, ignore_index: int = 255, class_names=None,
                              check_workers: int | None = None, skip_bad_files: bool = True) -> Split:
    """root/images/SPLIT/NAME.jpg with root/annotations/SPLIT/NAME.png (mmseg's custom dataset layout, as
    ADEChallengeData2016). Every pair is checked before training starts. A damaged pair (an image or
    annotation that does not decode, an annotation of another size than its image) is skipped with a
    warning naming it, or with `skip_bad_files=False` an error; what says the settings do not fit the
    data (a missing partner, a multi-channel annotation, a class value out of range) is an error naming
    the files."""
    image_dir, label_dir = os.path.join(root, "images", split), os.path.join(root, "annotations", split)
    for directory in (image_dir, label_dir):
        if not os.path.isdir(directory):
            raise DataError(f"segmentation folder {directory} does not exist; expected {root}/images/{split}/NAME.jpg "
                            f"and {root}/annotations/{split}/NAME.png")
    images, labels = _stems(image_dir, IMAGE_EXTENSIONS), _stems(label_dir, (".png",))
    lonely = [f"image {images[k]} has no annotation {os.path.join(label_dir, k)}.png" for k in sorted(images.keys() - labels.keys())]
    lonely += [f"annotation {labels[k]} has no image in {image_dir}" for k in sorted(labels.keys() - images.keys())]
    if lonely:
        raise DataError(f"segmentation folder {root} ({split}): {len(lonely)} file(s) without a partner: " +
                        "; ".join(lonely[:5]) + ("; ..." if len(lonely) > 5 else ""))
    if not images:
        raise DataError(f"segmentation folder {image_dir} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    stems = sorted(images)
    with concurrent.futures.ThreadPoolExecutor(check_workers or min(32, (os.cpu_count() or 1) * 4)) as pool:
        checks = list(pool.map(lambda k: _check_pair(images[k], labels[k], num_classes, reduce_zero_label,
                                                      ignore_index), stems))
    problems = [f"{path}: {why}" for path, why, damage in filter(None, checks) if not damage]
    if problems:
        raise DataError(f"segmentation folder {root} ({split}): {len(problems)} bad example(s): " +
                        "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
    bad = [(path, why) for path, why, _ in filter(None, checks)]
    _skip_or_stop(bad, len(stems), f"segmentation folder {root} ({split})", skip_bad_files)
    stems = [k for k, check in zip(stems, checks) if not check]
    mine = stems[process_index::process_count]
    local, largest = _shares(len(stems), process_index, process_count)
    dataset = tf.data.Dataset.from_tensor_slices({"image": [images[k] for k in mine], "label": [labels[k] for k in mine]})
    dataset = dataset.map(lambda ex: {"image": tf.io.read_file(ex["image"]), "label": tf.io.read_file(ex["label"])})
    return Split(dataset, local, largest, len(stems), num_classes, class_names, tuple(": ".join(b) for b in bad))


def scenes_split(split: str, count: int, *, size: int, process_index: int, process_count: int, seed: int = 0) -> Split:
    """The offline segmentation demo: `count` digit scenes (swin_jax.data.scenes), made in memory."""
    from swin_jax.data import scenes

    images, labels = scenes.scene_arrays(split, count, size=size, seed=seed)
    local, largest = _shares(len(images), process_index, process_count)
    dataset = tf.data.Dataset.from_tensor_slices({"image": images[process_index::process_count],
                                                  "label": labels[process_index::process_count]})
    return Split(dataset, local, largest, len(images), len(scenes.SCENE_CLASSES), scenes.SCENE_CLASSES)
