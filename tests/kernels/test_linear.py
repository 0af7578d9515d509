"""kernels/linear.cu (a Linear layer with one output: the discriminators' logit) against its
NumPy reference (the GEMM formulas, cganraw.ops.linear.linear_one_output_numpy) through the
emulator, on awkward shapes; the reference by float64 finite differences; the layer on emu
against the numpy backend."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import linear as L

from .conftest import assert_close

# (N, F): one value, a batch of 1, odd sizes, D's logit at width 4 with minibatch stddev
# (5 * 49 features) and at width 128 (129 * 49), batch 3 and a 3-term batch of 128
SHAPES = [(1, 1), (1, 7), (3, 1), (5, 33), (7, 245), (3, 6321), (384, 250), (0, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("bias", [True, False])
def test_one_output_kernels_equal_the_reference(shape, bias, all_orders, rng):
    n, f = shape
    x = rng.standard_normal(shape).astype(np.float32)
    W = rng.standard_normal((1, f)).astype(np.float32)
    b = rng.standard_normal(1).astype(np.float32) if bias else None
    dy = rng.standard_normal((n, 1)).astype(np.float32)
    y_r, dx_r, dW_r, db_r = L.linear_one_output_numpy(x.astype(np.float64), W.astype(np.float64),
                                                      None if b is None else b.astype(np.float64), dy.astype(np.float64))
    y = L.linear_one_output_forward_cuda(x, W, b)
    assert_close(y, y_r, 1e-6 * max(f, 1), 1e-5, "forward")
    dx, dW, db = L.linear_one_output_backward_cuda(dy, x, W, has_bias=bias)
    np.testing.assert_array_equal(backend.asnumpy(dx), dy * W)        # one product each: exact
    assert_close(dW, dW_r, 1e-6 * max(n, 1), 1e-5, "dW")
    assert (db is None) == (not bias)
    if bias:
        assert_close(db, db_r, 1e-6 * max(n, 1), 1e-5, "db")
    # added into the parameters' .grad: the same sums; without need_dx / need_dW nothing else
    gW = rng.standard_normal((1, f)).astype(np.float32)
    gb = rng.standard_normal(1).astype(np.float32)
    before = (gW.copy(), gb.copy())
    dx2, none_w, none_b = L.linear_one_output_backward_cuda(dy, x, W, need_dx=False, has_bias=bias, dW_out=gW,
                                                            db_out=gb if bias else None)
    assert dx2 is None and none_w is None and none_b is None
    np.testing.assert_array_equal(backend.asnumpy(gW), before[0] + backend.asnumpy(dW))
    np.testing.assert_array_equal(backend.asnumpy(gb), before[1] + (backend.asnumpy(db) if bias else 0))
    dx3, w3, b3 = L.linear_one_output_backward_cuda(dy, x, W, need_dW=False, has_bias=bias)
    np.testing.assert_array_equal(backend.asnumpy(dx3), backend.asnumpy(dx))
    assert w3 is None and b3 is None
    # the public ops dispatch to them (one launch each way)
    y4, cache = L.linear_forward(x, W, b)
    np.testing.assert_array_equal(backend.asnumpy(y4), backend.asnumpy(y))
    dx4, dW4, db4 = L.linear_backward(dy, cache)
    np.testing.assert_array_equal(backend.asnumpy(dW4), backend.asnumpy(dW))
    assert (db4 is None) == (not bias)


def test_one_output_reference_by_finite_differences(rng):
    # d/dx, d/dW, d/db of sum(dy * (x W^T + b)) in float64 (the formulas the kernels follow)
    x, W, b, dy = rng.standard_normal((4, 6)), rng.standard_normal((1, 6)), rng.standard_normal(1), \
        rng.standard_normal((4, 1))
    _, dx, dW, db = L.linear_one_output_numpy(x, W, b, dy)

    def f(x_, W_, b_):
        return float((dy * L.linear_one_output_numpy(x_, W_, b_, dy)[0]).sum())
    eps = 1e-6
    for arr, grad in ((x, dx), (W, dW), (b, db)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            hi = f(x, W, b)
            arr[i] = old - eps
            lo = f(x, W, b)
            arr[i] = old
            num[i] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_one_output_arguments(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    W = rng.standard_normal((1, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"expected x \(N, F\) and W \(1, F\)"):
        L.linear_one_output_forward_cuda(x, W[:, :3])
    with pytest.raises(ValueError, match=r"b must have shape \(1,\)"):
        L.linear_one_output_forward_cuda(x, W, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"expected dy \(N, 1\)"):
        L.linear_one_output_backward_cuda(np.zeros((2, 1), np.float32), x, W)
    with pytest.raises(ValueError, match="together"):
        L.linear_one_output_backward_cuda(np.zeros((3, 1), np.float32), x, W, has_bias=True,
                                          dW_out=np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="dW_out must be"):
        L.linear_one_output_backward_cuda(np.zeros((3, 1), np.float32), x, W, dW_out=np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        L.linear_one_output_forward_cuda(x.astype(np.float64), W)
    # an empty batch: zero gradients, written or added
    dW0 = L.linear_one_output_backward_cuda(np.zeros((0, 1), np.float32), x[:0], W, has_bias=True)
    assert np.array_equal(backend.asnumpy(dW0[1]), np.zeros((1, 4))) and np.array_equal(backend.asnumpy(dW0[2]), [0])


def test_one_output_layer_on_emu_equals_numpy(launches, rng):
    # nn.Linear(F, 1) on emu: one launch each way, the numpy backend's values
    x = rng.standard_normal((5, 37)).astype(np.float32)
    dy = rng.standard_normal((5, 1)).astype(np.float32)
    out = {}
    for bk in ("emu", "numpy"):
        backend.use(bk)
        layer = nn.Linear(37, 1, rng=np.random.default_rng(3))
        launches.clear()
        y = layer(x)
        dx = layer.backward(dy)
        if bk == "emu":
            assert launches == ["linear_one_output_forward_v1", "linear_one_output_backward_v1"], launches
        out[bk] = [backend.asnumpy(a) for a in (y, dx, layer.weight.grad, layer.bias.grad)]
    backend.use("emu")
    for a, b, name in zip(out["emu"], out["numpy"], ("y", "dx", "dW", "db")):
        assert_close(a, b, 1e-5, 1e-5, name)
