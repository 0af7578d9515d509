"""kernels/adam.cu against cganraw.ops.adam's NumPy reference, through the emulator: the
fused in-place update of p, m, v over several steps (bias corrections change per step),
with and without weight decay, on odd sizes and the conv cGAN's parameter shapes."""
import numpy as np
import pytest

from cganraw import backend, nn
from cganraw.ops import adam as AD
from cganraw.optim import Adam
from tests.kernels.conftest import assert_close

VERSIONS = (1, 2)
# odd sizes, then parameters of the conv cGAN (width 128): G's fc weight (6272, 100), a
# ConvTranspose2d weight (129, 128, 4, 4), the last Conv2d (1, 128, 7, 7), a BatchNorm or
# bias vector (128,), the label Embedding (10, 50)
SHAPES = [(1,), (7,), (17, 33, 15), (45, 7, 129), (6272, 100), (129, 128, 4, 4), (1, 128, 7, 7), (128,), (10, 50)]
# the emulator does the reference's float32 operations in its order: agreement to an ulp or two
TOL = (1e-7, 1e-6)


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def _state(rng, shape):
    p = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    return p, np.zeros(shape, np.float32), np.zeros(shape, np.float32)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2], ids=["wd0", "wd"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("version", VERSIONS)
def test_adam_kernel_matches_reference(version, shape, weight_decay, rng):
    p, m, v = _state(rng, shape)
    p_r, m_r, v_r = p.copy(), m.copy(), v.copy()
    hyper = dict(lr=2e-4, beta1=0.5, beta2=0.999, eps=1e-8, weight_decay=weight_decay)
    for step in range(1, 4):
        g = rng.standard_normal(shape).astype(np.float32)
        AD.adam_update_cuda(p, g, m, v, step=step, version=version, **hyper)
        AD.adam_update_numpy(p_r, g, m_r, v_r, step=step, **hyper)
        label = f"adam_update_v{version} {shape} step {step}"
        assert_close(m, m_r, *TOL, f"{label} m")
        assert_close(v, v_r, *TOL, f"{label} v")
        assert_close(p, p_r, *TOL, f"{label} p")


def test_optimizer_on_emu_matches_numpy_backend(launches, rng):
    # Adam.step through the public op: dispatches to the kernel, same parameters after 3 steps
    grads = [[rng.standard_normal(s).astype(np.float32) for s in ((50, 7), (50,))] for _ in range(3)]
    out = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        layer = nn.Linear(7, 50, rng=np.random.default_rng(1))
        opt = Adam(layer.parameters(), lr=1e-3)
        for gw, gb in grads:
            layer.weight.grad[...] = gw
            layer.bias.grad[...] = gb
            opt.step()
        out[name] = (layer.weight.data.copy(), layer.bias.data.copy(), opt.m[0].copy(), opt.v[1].copy())
    backend.use("emu")
    # the optimiser packs its parameters into one flat buffer: one launch per step
    assert launches == ["adam_update_v2"] * 3
    for a, b in zip(out["emu"], out["numpy"]):
        assert_close(a, b, *TOL, "Adam emu vs numpy")


def test_bad_inputs_are_rejected_or_made_contiguous(rng):
    p, m, v = _state(rng, (6, 8))
    g = rng.standard_normal((6, 8)).astype(np.float32)
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
    with pytest.raises(TypeError, match="adam_update: param: kernels take float32, got float64"):
        AD.adam_update(p.astype(np.float64), g, m, v, **hyper)
    with pytest.raises(TypeError, match="adam_update: grad: kernels take float32, got float64"):
        AD.adam_update_cuda(p, g.astype(np.float64), m, v, **hyper)
    with pytest.raises(ValueError, match=r"adam_update: grad has shape \(6, 7\), param \(6, 8\)"):
        AD.adam_update_cuda(p, g[:, :7], m, v, **hyper)
    with pytest.raises(ValueError, match="version"):
        AD.adam_update_cuda(p, g, m, v, version=0, **hyper)
    # strided p, m, v are updated in place through copies written back; a strided grad is read
    P, M, V = (np.zeros((6, 16), np.float32) for _ in range(3))
    P[:] = rng.standard_normal((6, 16))
    P_r, M_r, V_r = P.copy(), M.copy(), V.copy()
    G = rng.standard_normal((6, 16)).astype(np.float32)
    AD.adam_update_cuda(P[:, ::2], G[:, 1::2], M[:, ::2], V[:, ::2], **hyper)
    AD.adam_update_numpy(P_r[:, ::2], G[:, 1::2], M_r[:, ::2], V_r[:, ::2], **hyper)
    for a, b, what in ((P, P_r, "p"), (M, M_r, "m"), (V, V_r, "v")):
        assert_close(a, b, *TOL, f"strided {what}")
