import itertools

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from swin_jax import data
from swin_jax.data.sources import DataError

import multiprocess


def _demo(**kw) -> ml_collections.ConfigDict:
    config = data.default_config()
    config.update(dict(dataset="demo", image_size=32, batch_size=32, shuffle_buffer=512), **kw)
    return config


def _take(pipeline, n):
    return list(itertools.islice(iter(pipeline), n))


@pytest.fixture(scope="module")
def reference_batches():
    """The first two epochs and a bit (44 steps per epoch) of the demo training stream."""
    return _take(data.train_input(_demo(), seed=3), 50)


def test_same_seed_same_batches_other_seed_other_batches(reference_batches):
    again = _take(data.train_input(_demo(), seed=3), 3)
    for a, b in zip(again, reference_batches):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = _take(data.train_input(_demo(), seed=4), 1)[0]
    assert not np.array_equal(other["label"], reference_batches[0]["label"])


def test_epochs_are_permutations_and_differ():
    """With augmentation off the stream shows the data itself: no image twice in an epoch."""
    plain = _demo(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, rand_augment="")
    training = data.train_input(plain, seed=3)
    assert training.steps == 1437 // 32 == 44
    batches = _take(training, 2 * training.steps)
    images, _ = data.sources.demo_arrays("train")
    index = {x.tobytes(): i for i, x in enumerate(images)}
    order = [[index[x.tobytes()] for b in batches[e * 44:(e + 1) * 44] for x in b["image"]] for e in (0, 1)]
    assert all(len(set(o)) == len(o) == 44 * 32 for o in order)
    assert order[0][:64] != order[1][:64]  # each epoch has its own order


@pytest.mark.parametrize("start", [1, 44, 47])
def test_resumed_stream_continues_the_same_sequence(reference_batches, start):
    resumed = _take(data.train_input(_demo(), seed=3, start_step=start), 2)
    for i, batch in enumerate(resumed):
        np.testing.assert_array_equal(batch["image"], reference_batches[start + i]["image"])
        np.testing.assert_array_equal(batch["label"], reference_batches[start + i]["label"])


def test_global_batches_do_not_depend_on_the_device_count(reference_batches):
    devices = jax.devices()
    assert len(devices) == 8
    got = []
    for n in (1, 8):
        mesh = jax.make_mesh((n,), ("data",), devices=devices[:n])
        sharding = NamedSharding(mesh, P("data"))
        batch = next(data.to_global(iter(data.train_input(_demo(), seed=3)), sharding))
        assert batch["image"].shape == (32, 32, 32, 3) and batch["image"].sharding == sharding
        assert len(batch["image"].addressable_shards) == n
        got.append(jax.device_get(batch))
    for key in ("image", "label"):
        np.testing.assert_array_equal(got[0][key], got[1][key])
        np.testing.assert_array_equal(got[0][key], reference_batches[0][key])


def test_processes_read_disjoint_shares_that_cover_the_data():
    """Three processes over a whole epoch, augmentation off: each example of the epoch is read by exactly
    one process, once; every process takes the same number of steps."""
    plain = _demo(batch_size=30, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, rand_augment="")
    images, _ = data.sources.demo_arrays("train")
    index = {x.tobytes(): i for i, x in enumerate(images)}
    seen = []
    for p in range(3):
        training = data.train_input(plain, seed=0, process_index=p, process_count=3)
        assert training.steps == 1437 // 30 and training.local_batch_size == 10
        batches = _take(training, training.steps)
        assert all(b["image"].shape == (10, 32, 32, 3) for b in batches)
        seen.append([index[x.tobytes()] for b in batches for x in b["image"]])
    flat = [i for share in seen for i in share]
    assert len(flat) == len(set(flat)) == 3 * 47 * 10  # disjoint, and no example twice within an epoch
    for p, share in enumerate(seen):  # each process's own third of the data (every third example)
        assert set(share) <= set(range(p, 1437, 3))


def test_synthetic_source_needs_no_data():
    config = data.default_config()
    config.update(dict(dataset="synthetic", image_size=48, batch_size=8, num_classes=5))
    training = data.train_input(config, seed=0)
    first, second = _take(training, 2)
    assert first["image"].shape == (8, 48, 48, 3) and first["image"].dtype == np.uint8
    assert first["image"].min() == 0 and first["image"].max() == 255
    assert first["label"].max() < 5 and not np.array_equal(first["image"], second["image"])
    assert training.steps == 1_281_167 // 8
    evaluation = data.eval_input(config)
    assert evaluation.steps == len(list(evaluation)) == 2 and next(iter(evaluation))["mask"].all()


def test_config_errors_name_the_field():
    with pytest.raises(DataError, match="config.input.batch_size=30 must be a positive multiple of the 4"):
        data.train_input(_demo(batch_size=30), seed=0, process_index=0, process_count=4)
    with pytest.raises(DataError, match="fewer than one global batch"):
        data.train_input(_demo(batch_size=4096), seed=0)
    with pytest.raises(KeyError, match='Did you mean "mixup_alpha"'):
        _demo(mixup_aplha=0.5)  # a misspelt field is refused, not silently added


def test_two_processes_assemble_one_global_batch():
    """Two JAX processes of 4 devices: each reads its own share, and together they form, step after step
    (across an epoch boundary), the global batches that one process with both shares would build."""
    results = multiprocess.run("data_worker.py", 2, 4)
    shares = [_take(data.train_input(_demo(), seed=3, process_index=p, process_count=2), 46) for p in range(2)]
    for p, steps in enumerate(results):
        assert len(steps) == 46
        for step, result in enumerate(steps):
            assert result["shape"] == [32, 32, 32, 3] and result["shards"] == 4
            assert result["local_labels"] == shares[p][step]["label"].tolist(), (p, step)
            assert result["label_sum"] == int(shares[0][step]["label"].sum() + shares[1][step]["label"].sum())


def test_global_sharding_gives_the_same_batches_for_any_process_count():
    one = _take(data.train_input(_demo(shard="global"), seed=3, start_step=5, process_index=0, process_count=1), 2)
    for count in (2, 4):
        parts = [_take(data.train_input(_demo(shard="global"), seed=3, start_step=5, process_index=p,
                                        process_count=count), 2) for p in range(count)]
        for step in range(2):
            for key in ("image", "label"):
                joined = np.concatenate([parts[p][step][key] for p in range(count)])
                np.testing.assert_array_equal(joined, one[step][key])
    with pytest.raises(DataError, match="config.input.shard must be 'process' or 'global'"):
        data.train_input(_demo(shard="hosts"), seed=0)
