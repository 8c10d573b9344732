"""Window helpers, and the roll-and-mask block against a slow reference built without any roll."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from swin_jax.models import windows
from swin_jax.models.swin import SwinBlock, WindowAttention


def test_partition_and_reverse_are_inverse():
    x = jnp.arange(2 * 6 * 9 * 5, dtype=jnp.float32).reshape(2, 6, 9, 5)
    parts = windows.window_partition(x, 3)
    assert parts.shape == (2 * 2 * 3, 9, 5)
    # The first window holds the top-left 3x3 patch in row-major order.
    np.testing.assert_array_equal(parts[0], x[0, :3, :3].reshape(9, 5))
    np.testing.assert_array_equal(windows.window_reverse(parts, 3, 6, 9), x)


def test_relative_position_index_is_the_official_buffer():
    w = 7
    index = windows.relative_position_index(w)
    assert index.shape == (w * w, w * w)
    assert index.min() == 0 and index.max() == (2 * w - 1) ** 2 - 1
    # Every token sees itself at offset (0, 0), the centre of the table.
    assert np.all(np.diag(index) == (w - 1) * (2 * w - 1) + (w - 1))
    # Token (0, 0) looking at token (w-1, w-1) has offset (-(w-1), -(w-1)): table row 0.
    assert index[0, w * w - 1] == 0
    assert index[w * w - 1, 0] == (2 * w - 1) ** 2 - 1


def test_small_window_reads_the_same_offsets_from_a_larger_table():
    small, big = windows.relative_position_index(4, 7), windows.relative_position_index(7)
    # Token (r, c) of a 4x4 window and of a 7x7 window see the same offsets to (r', c').
    for (r, c), (r2, c2) in [((0, 0), (3, 3)), ((1, 2), (0, 3)), ((3, 0), (2, 2))]:
        assert small[r * 4 + c, r2 * 4 + c2] == big[r * 7 + c, r2 * 7 + c2]
    with pytest.raises(ValueError, match="larger than the bias table"):
        windows.relative_position_index(8, 7)


def test_masks_are_cached_and_read_only():
    a = windows.shifted_window_mask(14, 14, 7, 3)
    assert windows.shifted_window_mask(14, 14, 7, 3) is a
    assert not a.flags.writeable
    assert set(np.unique(a)) == {0.0, windows.MASK_VALUE}
    with pytest.raises(ValueError, match="not a multiple of window"):
        windows.shifted_window_mask(15, 14, 7, 3)


def _layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def reference_block(p, x, window, shift, heads):
    """One Swin block on one image, written from the paper's description with no roll at all.

    Shifting the window grid by `shift` makes token (y, x) belong to window
    (floor((y - shift) / window), floor((x - shift) / window)); tokens attend only to tokens of the
    same window. Maps are padded with zeros to a multiple of the window after norm1.
    """
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    h, w, c = x.shape
    shortcut = x
    y = _layer_norm(x, p["norm1"])
    hp, wp = -(-h // window) * window, -(-w // window) * window
    y = np.pad(y, ((0, hp - h), (0, wp - w), (0, 0))).reshape(-1, c)
    rows, cols = np.divmod(np.arange(hp * wp), wp)
    group_r, group_c = (rows - shift) // window, (cols - shift) // window
    same_window = (group_r[:, None] == group_r[None]) & (group_c[:, None] == group_c[None])

    a = p["attn"]
    table_w = int(round((np.sqrt(a["relative_position_bias_table"].shape[0]) + 1) / 2))
    table = a["relative_position_bias_table"].reshape(2 * table_w - 1, 2 * table_w - 1, heads)
    dy = rows[:, None] - rows[None] + table_w - 1
    dx = cols[:, None] - cols[None] + table_w - 1
    qkv = y @ a["qkv"]["kernel"] + a["qkv"]["bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    d = c // heads
    out = np.zeros_like(y)
    for head in range(heads):
        sl = slice(head * d, (head + 1) * d)
        logits = q[:, sl] @ k[:, sl].T * d ** -0.5
        logits = logits + np.where(same_window, table[np.clip(dy, 0, 2 * table_w - 2),
                                                      np.clip(dx, 0, 2 * table_w - 2), head], 0.0)
        logits = np.where(same_window, logits, -np.inf)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        out[:, sl] = (attn / attn.sum(-1, keepdims=True)) @ v[:, sl]
    out = out @ a["proj"]["kernel"] + a["proj"]["bias"]
    x = shortcut + out.reshape(hp, wp, c)[:h, :w]

    m = p["mlp"]
    z = _layer_norm(x, p["norm2"]) @ m["fc1"]["kernel"] + m["fc1"]["bias"]
    z = 0.5 * z * (1 + erf(z / np.sqrt(2)))
    return x + z @ m["fc2"]["kernel"] + m["fc2"]["bias"]


@pytest.mark.parametrize(
    "height, width, window, shift, expect_window, expect_shift",
    [
        (14, 14, 7, 3, 7, 3),  # the standard case
        (10, 13, 4, 2, 4, 2),  # padding on both sides before the shift
        (9, 9, 3, 1, 3, 1),  # many windows, odd shift
        (5, 9, 7, 3, 5, 0),  # map smaller than the window: one unshifted window per 5x5, padded
        (6, 6, 3, 0, 3, 0),  # unshifted block
    ],
)
def test_roll_and_mask_equals_explicit_shifted_windows(height, width, window, shift, expect_window, expect_shift):
    assert windows.effective_window(height, width, window, shift) == (expect_window, expect_shift)
    heads, c = 2, 8
    block = SwinBlock(dim=c, num_heads=heads, window_size=window, attention=WindowAttention, shift_size=shift)
    x = np.random.RandomState(0).randn(2, height, width, c).astype(np.float32)
    params = block.init(jax.random.key(1), x)["params"]
    # Non-trivial norms and biases, so that any mix-up of tokens or channels shows.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    got = np.asarray(block.apply({"params": params}, x))
    for i in range(2):
        want = reference_block(params, x[i].astype(np.float64), expect_window, expect_shift, heads)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height,width,window,shift", [(14, 14, 7, 3), (12, 24, 6, 3), (16, 8, 4, 2)])
def test_one_gather_is_the_roll_and_the_partition_and_back(height, width, window, shift):
    x = jax.random.normal(jax.random.key(0), (2, height, width, 5))
    order, inverse = windows.shifted_window_order(height, width, window, shift)
    rolled = windows.window_partition(jnp.roll(x, (-shift, -shift), axis=(1, 2)), window)
    gathered = windows.permute_tokens(x.reshape(2, -1, 5), order, inverse).reshape(rolled.shape)
    np.testing.assert_array_equal(gathered, rolled)
    back = windows.permute_tokens(gathered.reshape(2, -1, 5), inverse, order).reshape(x.shape)
    np.testing.assert_array_equal(back, x)
    # The written-out gradient is the inverse gather: the same as differentiating the roll and partition.
    weights = jax.random.normal(jax.random.key(1), rolled.shape)
    grad = jax.grad(lambda x: jnp.sum(weights * windows.permute_tokens(x.reshape(2, -1, 5), order, inverse)
                                      .reshape(rolled.shape)))(x)
    want = jax.grad(lambda x: jnp.sum(weights * windows.window_partition(jnp.roll(x, (-shift, -shift), (1, 2)),
                                                                         window)))(x)
    np.testing.assert_array_equal(grad, want)
