"""MaxPool2d and softmax cross-entropy: definitions, finite differences, PyTorch."""
import numpy as np
import pytest

from cganraw import nn
from cganraw.gradcheck import check_backward, check_module
from cganraw.losses import softmax_cross_entropy
from cganraw.ops import cross_entropy as CE
from cganraw.ops.maxpool import maxpool2d_backward, maxpool2d_forward, maxpool2d_forward_windows_numpy


def distinct(rng, shape):
    # a random permutation of well-separated values: no ties, and a +-eps nudge never
    # changes a window's argmax
    return rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1


def maxpool_loops(x, k, s):
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    y = np.empty((n, c, ho, wo), x.dtype)
    for a in range(n):
        for b in range(c):
            for i in range(ho):
                for j in range(wo):
                    y[a, b, i, j] = x[a, b, i * s:i * s + k, j * s:j * s + k].max()
    return y


POOL_CASES = [  # (N, C, H, W, k, s)
    (1, 1, 4, 4, 2, None),
    (2, 3, 7, 7, 2, None),     # odd size: the last row/column is dropped
    (1, 2, 7, 7, 3, 2),        # overlapping windows
    (2, 1, 6, 5, 3, 1),
    (1, 2, 8, 9, 2, 3),        # gaps between windows
    (3, 2, 5, 5, 5, None),     # one window
]


@pytest.mark.parametrize("n,c,h,w,k,s", POOL_CASES)
def test_maxpool_forward_matches_loops(n, c, h, w, k, s, rng):
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    y = nn.MaxPool2d(k, s)(x)
    np.testing.assert_array_equal(y, maxpool_loops(x, k, s or k))
    assert y.dtype == np.float32


@pytest.mark.parametrize("n,c,h,w,k,s", POOL_CASES)
def test_maxpool_gradcheck(n, c, h, w, k, s, rng):
    check_module(nn.MaxPool2d(k, s), distinct(rng, (n, c, h, w)), eps=1e-3)


@pytest.mark.parametrize("n,c,h,w,k,s", POOL_CASES)
def test_maxpool_tap_passes_match_the_window_argmax(n, c, h, w, k, s, rng):
    # quantised values: many ties, which both must break towards the first tap
    x = rng.integers(0, 3, size=(n, c, h, w)).astype(np.float32)
    y, (idx, *_) = maxpool2d_forward(x, k, s)
    y_ref, (idx_ref, *_) = maxpool2d_forward_windows_numpy(x, k, s or k)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)


def test_maxpool_nan_propagates_and_gets_the_gradient():
    x = np.zeros((1, 1, 2, 4), np.float32)
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 0, 3] = 2.0
    y, cache = maxpool2d_forward(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 2.0
    dx = maxpool2d_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 1], [1, 0, 0, 0]])


def test_maxpool_ties_go_to_the_first_max():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, 2:] = [[5.0, 5.0], [5.0, 1.0]]
    y, cache = maxpool2d_forward(x, 2, 2)
    dx = maxpool2d_backward(np.ones_like(y), cache)
    expect = np.zeros((4, 4))
    expect[0, 0] = expect[0, 2] = expect[2, 0] = expect[2, 2] = 1  # all-zero windows: their first tap
    np.testing.assert_array_equal(dx[0, 0], expect)


def test_maxpool_overlapping_windows_add_up():
    # with k=3, s=1 the centre pixel is the max of all four windows
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1:3, 1:3] = [[9.0, 1.0], [1.0, 1.0]]
    layer = nn.MaxPool2d(3, 1)
    y = layer(x)
    np.testing.assert_array_equal(y[0, 0], [[9, 9], [9, 9]])
    dx = layer.backward(np.ones_like(y))
    assert dx[0, 0, 1, 1] == 4 and dx.sum() == 4


def test_maxpool_defaults_and_errors():
    layer = nn.MaxPool2d(2)
    assert layer.stride == 2 and "kernel_size=2, stride=2" in repr(layer)
    assert nn.MaxPool2d((3, 3), stride=(2, 2)).stride == 2
    with pytest.raises(ValueError, match=r"MaxPool2d: expected input of shape \(N, C, H, W\).*\(2, 4\)"):
        layer(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="MaxPool2d: expected a floating-point array"):
        layer(np.zeros((1, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="MaxPool2d.*1x5.*smaller than the kernel"):
        layer(np.zeros((1, 1, 1, 5), np.float32))
    with pytest.raises(ValueError, match="kernel_size must be positive"):
        nn.MaxPool2d(0)
    with pytest.raises(TypeError, match="stride must be an int"):
        nn.MaxPool2d(2, 1.5)
    y = layer(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d.backward: gradient has shape \(1, 1, 3, 3\), expected \(1, 1, 2, 2\)"):
        layer.backward(np.zeros((1, 1, 3, 3), np.float32))
    layer(np.zeros((1, 1, 4, 4), np.float32))
    layer.backward(np.zeros_like(y))
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.zeros_like(y))


def test_maxpool_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for n, c, h, w, k, s in POOL_CASES + [(2, 3, 28, 28, 2, None)]:
        x = rng.normal(size=(n, c, h, w)).astype(np.float32)
        x[0, 0, :2, :2] = 1.5   # a tie inside the first window
        dy = rng.normal(size=nn.MaxPool2d(k, s)(x).shape).astype(np.float32)
        layer = nn.MaxPool2d(k, s)
        y = layer(x)
        dx = layer.backward(dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.max_pool2d(xt, k, s)
        yt.backward(torch.tensor(dy))
        np.testing.assert_array_equal(y, yt.detach().numpy())
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-6)


# --- softmax cross-entropy -------------------------------------------------------------

def ce_naive(z, y):
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(y)), y]).mean()


def test_ce_matches_definition_and_gradient(rng):
    z = rng.normal(size=(6, 5)) * 2
    y = np.array([0, 4, 2, 2, 1, 3])
    loss, dz = softmax_cross_entropy(z, y)
    assert isinstance(loss, float) and abs(loss - ce_naive(z, y)) < 1e-12
    assert dz.shape == z.shape and dz.dtype == np.float64
    np.testing.assert_allclose(dz.sum(axis=1), 0, atol=1e-15)   # softmax minus one-hot, per row
    check_backward(lambda a: np.asarray(softmax_cross_entropy(a, y)[0]),
                   lambda gy: gy * softmax_cross_entropy(z, y)[1], [z], elementwise=True)


def test_ce_ops_chain_the_upstream_gradient(rng):
    z = rng.normal(size=(3, 4))
    y = np.array([1, 0, 3])
    loss, cache = CE.softmax_cross_entropy_forward(z, y)
    np.testing.assert_allclose(CE.softmax_cross_entropy_backward(2.5, cache),
                               2.5 * softmax_cross_entropy(z, y)[1], rtol=1e-14)


def test_softmax_helpers(rng):
    z = rng.normal(size=(4, 7)) * 3
    p = CE.softmax(z)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-14)
    np.testing.assert_allclose(np.log(p), CE.log_softmax(z), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(CE.softmax(z + 1000), p, rtol=1e-12)   # shift invariance, no overflow


def test_ce_is_finite_at_extreme_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], np.float32)
    loss, dz = softmax_cross_entropy(z, np.array([0, 1]))
    assert np.isfinite(loss) and np.all(np.isfinite(dz))
    assert abs(loss - np.log(2) / 2) < 1e-6       # row 0 is certain; row 1 ties two classes
    loss, dz = softmax_cross_entropy(z, np.array([1, 0]))
    assert abs(loss - 2e4) < 1 and np.all(np.isfinite(dz))
    assert np.all(np.isfinite(CE.log_softmax(z))) and np.all(np.isfinite(CE.softmax(z)))


def test_ce_float32_keeps_dtype(rng):
    z = rng.normal(size=(5, 3)).astype(np.float32)
    _, dz = softmax_cross_entropy(z, np.array([0, 1, 2, 0, 1], np.int32))
    assert dz.dtype == np.float32


def test_ce_rejects_bad_input():
    z = np.zeros((3, 4))
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        softmax_cross_entropy(np.zeros((3, 4), np.int64), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"expected logits of shape \(N, K\).*\(12,\)"):
        softmax_cross_entropy(np.zeros(12), np.zeros(12, np.int64))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        softmax_cross_entropy(z, np.zeros(3))
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\).*got shape \(4,\)"):
        softmax_cross_entropy(z, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got values from -1 to 2"):
        softmax_cross_entropy(z, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 4\).*from 0 to 4"):
        softmax_cross_entropy(z, np.array([0, 4, 2]))


def test_ce_matches_torch(rng):
    torch = pytest.importorskip("torch")
    z = (rng.normal(size=(9, 6)) * 4).astype(np.float32)
    z[0] = [1e4, -1e4, 0, 0, 0, 0]
    y = rng.integers(0, 6, size=9)
    loss, dz = softmax_cross_entropy(z, y)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    lt.backward()
    assert abs(loss - lt.item()) < 1e-5
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(CE.log_softmax(z), torch.log_softmax(torch.tensor(z), 1).numpy(), rtol=1e-5, atol=1e-5)
