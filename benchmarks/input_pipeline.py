"""Input pipeline throughput at 224 with the full official augmentation, per host core.

  python benchmarks/input_pipeline.py [--images 256] [--threads 1 2] [--seconds 20]

Builds an image folder of ImageNet-like JPEGs (about 500x375, quality 90) from the photographs shipped
with scikit-learn, then measures images/s of swin_jax's training pipeline (crop-before-decode, flip,
RandAugment rand-m9-mstd0.5-inc1; normalisation, erasing and mixup run on device) with a tf.data
thread pool of N threads, next to
timm's `create_transform` with the same recipe (PIL decode, one core), and of the evaluation pipeline.
Divide a chip's training images/s by the per-core figure to know how many host cores feed it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torchvision  # noqa: F401  # before TensorFlow: its native libraries crash when loaded after TF's
import numpy as np
from PIL import Image


def make_folder(root: str, count: int) -> list[str]:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 photographs
    rng = np.random.RandomState(0)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = rng.randint(300, 427), rng.randint(400, 640)
        y, x = rng.randint(0, photo.shape[0] - h + 1), rng.randint(0, photo.shape[1] - w + 1)
        image = Image.fromarray(photo[y:y + h, x:x + w]).resize((500, 375) if w > h else (375, 500))
        folder = os.path.join(root, "train", f"class{i % 10}")
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, f"{i}.jpg"))
        image.save(paths[-1], "JPEG", quality=90)
    return paths


def measure(iterator, batch_size: int, seconds: float) -> float:
    next(iterator)  # trace, fill buffers
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(iterator)
        images += batch_size
    return images / (time.perf_counter() - start)


def timm_rate(paths: list[str], seconds: float) -> float:
    import torch
    from timm.data import create_transform

    torch.set_num_threads(1)
    transform = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                 re_mode="pixel", interpolation="bicubic")
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        with Image.open(paths[n % len(paths)]) as image:
            try:
                transform(image.convert("RGB"))
            except ValueError:  # timm's PosterizeIncreasing asks Pillow >= 11 for 0 bits, which it refuses
                pass
        n += 1
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from swin_jax import data

    with tempfile.TemporaryDirectory() as root:
        paths = make_folder(root, args.images)
        os.symlink(os.path.join(root, "train"), os.path.join(root, "val"))
        mean_kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
        print(f"{len(paths)} JPEGs, mean {mean_kb:.0f} KB, {os.cpu_count()} host cores")
        print(f"timm create_transform, PIL, 1 core: {timm_rate(paths, args.seconds):7.1f} images/s")
        for threads in args.threads:
            config = data.default_config()
            config.update(dict(dataset="folder", data_dir=root, batch_size=args.batch_size, threads=threads,
                               cache=True, shuffle_buffer=args.images))
            train = measure(iter(data.train_input(config, seed=0)), args.batch_size, args.seconds)
            config.update(dict(eval_split="train"))
            evaluation = data.eval_input(config)
            evaluate = measure(iter(evaluation.dataset.repeat().as_numpy_iterator()), args.batch_size, args.seconds)
            print(f"swin_jax train, {threads} thread(s): {train:7.1f} images/s = {train / threads:6.1f} per core; "
                  f"eval {evaluate:7.1f} images/s = {evaluate / threads:6.1f} per core")


if __name__ == "__main__":
    main()
