"""kernels/activation.cu and kernels/dropout.cu against their NumPy references, through
the CUDA emulator: every kernel, both versions, on sizes that break any tiling (1, 7,
odd 3-D sizes) and on the conv cGAN's real activation shapes at batch 3."""
import re

import numpy as np
import pytest

from cganraw import backend, cuda_emu, nn
from cganraw.ops import _launch
from cganraw.ops import activation as A
from cganraw.ops import dropout as DO
from tests.kernels.conftest import assert_close

VERSIONS = (1, 2)

# tiling breakers, a batch-1 shape, then the conv cGAN (width 128, batch 3): G's fc
# output (3, 6272) and its ConvT maps, D's conv maps and its Linear logits
SHAPES = [(1,), (7,), (17, 33, 15), (45, 7, 129), (1, 128, 7, 7),
          (3, 6272), (3, 128, 14, 14), (3, 128, 28, 28), (3, 1, 28, 28), (3, 128, 7, 7), (3, 1)]


def _ids(shapes):
    return ["x".join(map(str, s)) for s in shapes]


def _input(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[::11] = 0.0   # the ReLUs' kink sits exactly at 0: both sides must agree there
    return x


# name -> (kernel forward, kernel backward, reference forward, reference backward)
ACTIVATIONS = {
    "leaky_relu": (lambda x, v: A.leaky_relu_forward_cuda(x, 0.2, version=v), A.leaky_relu_backward_cuda,
                   lambda x: A.leaky_relu_forward_numpy(x, 0.2), A.leaky_relu_backward_numpy),
    "relu": (lambda x, v: A.relu_forward_cuda(x, version=v), A.relu_backward_cuda,
             A.relu_forward_numpy, A.relu_backward_numpy),
    "tanh": (lambda x, v: A.tanh_forward_cuda(x, version=v), A.tanh_backward_cuda,
             A.tanh_forward_numpy, A.tanh_backward_numpy),
    "sigmoid": (lambda x, v: A.sigmoid_forward_cuda(x, version=v), A.sigmoid_backward_cuda,
                A.sigmoid_forward_numpy, A.sigmoid_backward_numpy),
}
# libm (emulator) and CUDA's tanhf/expf are within 2 ulp of NumPy's; the ReLUs are exact
TOL = {"leaky_relu": (1e-7, 1e-6), "relu": (1e-7, 1e-6), "tanh": (2e-7, 2e-6), "sigmoid": (2e-7, 2e-6)}


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_activation_kernels_match_reference(op, version, shape, rng):
    fwd_k, bwd_k, fwd_r, bwd_r = ACTIVATIONS[op]
    atol, rtol = TOL[op]
    x = _input(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache = fwd_k(x, version)
    y_ref, _ = fwd_r(x)
    assert y.dtype == np.float32
    assert_close(y, y_ref, atol, rtol, f"{op}_forward_v{version} {shape}")
    # backward against the reference fed the same cache: tanh's 1 - y^2 turns a 1-ulp
    # difference of y near +-1 into a large relative one, which is the forward's, not this kernel's
    assert_close(bwd_k(dy, cache, version=version), bwd_r(dy, cache), atol, rtol,
                 f"{op}_backward_v{version} {shape}")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_activation_extremes_stay_finite(op, version):
    # +-1e4 must neither overflow expf (sigmoid's stable form) nor lose the sign of tanh
    x = np.array([-1e4, -100, -20, -1, -1e-30, -0.0, 0.0, 1e-30, 1, 20, 100, 1e4], dtype=np.float32)
    fwd_k, bwd_k, fwd_r, bwd_r = ACTIVATIONS[op]
    y, cache = fwd_k(x, version)
    y_ref, cache_ref = fwd_r(x)
    # a GPU flushes denormals (CuPy passes -ftz=true), hence the absolute floor
    assert_close(y, y_ref, 1e-30, 1e-6, f"{op} forward at extremes")
    dy = np.ones_like(x)
    assert_close(bwd_k(dy, cache, version=version), bwd_r(dy, cache_ref), 1e-30, 1e-6, f"{op} backward at extremes")


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 1023, 4097])
def test_version2_misaligned_views_and_odd_tails(n, rng):
    # a view that starts one float into its buffer is contiguous (no copy is made) but not
    # 16-byte aligned: version 2 must take its scalar path; n % 4 != 0 exercises the tail
    buf = rng.standard_normal(n + 1).astype(np.float32)
    x = buf[1:]
    dy = rng.standard_normal(n + 1).astype(np.float32)[1:]
    for op, (fwd_k, bwd_k, fwd_r, bwd_r) in ACTIVATIONS.items():
        y, cache = fwd_k(x, 2)
        y_ref, _ = fwd_r(x)
        assert_close(y, y_ref, *TOL[op], f"{op} forward, misaligned n={n}")
        assert_close(bwd_k(dy, cache, version=2), bwd_r(dy, cache), *TOL[op], f"{op} backward, misaligned n={n}")
    keep = rng.random(n + 1)[1:] >= 0.4
    y, _ = DO.dropout_forward_cuda(x, keep, 0.4, version=2)
    assert_close(y, DO.dropout_forward_numpy(x, keep, 0.4)[0], 0, 1e-7, f"dropout misaligned n={n}")


def test_public_ops_dispatch_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    x = _input(rng, (3, 128, 7, 7))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    for op, (fwd, bwd) in {"leaky_relu": (A.leaky_relu_forward, A.leaky_relu_backward),
                           "relu": (A.relu_forward, A.relu_backward),
                           "tanh": (A.tanh_forward, A.tanh_backward),
                           "sigmoid": (A.sigmoid_forward, A.sigmoid_backward)}.items():
        launches.clear()
        y, cache = fwd(x)
        dx = bwd(dy, cache)
        assert launches == [f"{op}_forward_v2", f"{op}_backward_v2"], (op, launches)
        fwd_r, bwd_r = ACTIVATIONS[op][2:]
        y_ref, _ = fwd_r(x)
        assert_close(y, y_ref, *TOL[op], f"public {op} forward")
        assert_close(dx, bwd_r(dy, cache), *TOL[op], f"public {op} backward")
    launches.clear()
    keep = rng.random(x.shape) >= 0.4
    y, cache = DO.dropout_forward(x, keep, 0.4)
    DO.dropout_backward(dy, cache)
    assert launches == ["dropout_forward_v2", "dropout_backward_v2"]


def test_layers_on_emu_match_numpy_backend(rng):
    # the layers through the kernels give the numpy backend's values, dropout's mask
    # included (it is drawn from the layer's own generator on every backend)
    x = _input(rng, (3, 6272))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        layers = [nn.LeakyReLU(0.2), nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Dropout(0.4, rng=123)]
        out = []
        for layer in layers:
            out.append((layer(x), layer.backward(dy)))
        results[name] = out
    backend.use("emu")
    # tanh's backward amplifies the forward's ulp differences near +-1 (see above)
    for (y_e, dx_e), (y_n, dx_n) in zip(results["emu"], results["numpy"]):
        assert_close(y_e, y_n, 2e-7, 2e-6, "layer forward emu vs numpy")
        assert_close(dx_e, dx_n, 2e-6, 2e-6, "layer backward emu vs numpy")


def test_bad_inputs_are_rejected_or_made_contiguous(rng):
    x64 = rng.standard_normal((3, 7))
    with pytest.raises(TypeError, match="leaky_relu_forward: x: kernels take float32, got float64"):
        A.leaky_relu_forward(x64)
    with pytest.raises(TypeError, match="sigmoid_forward"):
        A.sigmoid_forward_cuda(x64)
    x = rng.standard_normal((6, 14)).astype(np.float32)
    with pytest.raises(TypeError, match="tanh_backward: dy"):
        A.tanh_backward_cuda(x.astype(np.float64), x)
    # a non-contiguous view is copied to a contiguous array first
    view = x[:, ::2]
    assert not view.flags.c_contiguous
    for op, (fwd_k, bwd_k, fwd_r, bwd_r) in ACTIVATIONS.items():
        y, cache = fwd_k(view, 1)
        y_ref, _ = fwd_r(view)
        assert_close(y, y_ref, *TOL[op], f"{op} forward of a strided view")
        dyv = x[:, 1::2]  # another strided view, of view's shape
        assert_close(bwd_k(dyv, cache, version=2), bwd_r(dyv, cache), *TOL[op], f"{op} backward of a strided view")
    # shape mismatch between dy and the cache is an error, not an out-of-bounds read
    _, cache = A.relu_forward_cuda(x)
    with pytest.raises(ValueError, match="relu_backward"):
        A.relu_backward_cuda(x[:3], cache)
    with pytest.raises(ValueError, match="version"):
        A.relu_forward_cuda(x, version=3)


# ---------------------------------------------------------------- dropout

@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("version", VERSIONS)
def test_dropout_kernels_match_reference(version, shape, rng):
    p = 0.4
    x = _input(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    keep = rng.random(shape) >= p
    y, cache = DO.dropout_forward_cuda(x, keep, p, version=version)
    y_ref, cache_ref = DO.dropout_forward_numpy(x, keep, p)
    assert_close(y, y_ref, 0, 1e-7, f"dropout_forward_v{version} {shape}")
    assert_close(DO.dropout_backward_cuda(dy, cache, version=version), DO.dropout_backward_numpy(dy, cache_ref),
                 0, 1e-7, f"dropout_backward_v{version} {shape}")


@pytest.mark.parametrize("version", VERSIONS)
def test_dropout_masks_bool_uint8_and_bad(version, rng):
    x = rng.standard_normal((17, 33)).astype(np.float32)
    keep = rng.random(x.shape) >= 0.3
    y_bool, _ = DO.dropout_forward_cuda(x, keep, 0.3, version=version)
    y_u8, _ = DO.dropout_forward_cuda(x, keep.astype(np.uint8), 0.3, version=version)
    ref = DO.dropout_forward_numpy(x, keep, 0.3)[0]
    assert_close(y_bool, ref, 0, 1e-7, "bool mask")
    assert_close(y_u8, ref, 0, 1e-7, "uint8 mask")
    # a strided mask view is made contiguous
    big = rng.random((17, 66)) >= 0.3
    y_view, _ = DO.dropout_forward_cuda(x, big[:, ::2], 0.3, version=version)
    assert_close(y_view, DO.dropout_forward_numpy(x, big[:, ::2], 0.3)[0], 0, 1e-7, "strided mask")
    with pytest.raises(TypeError, match="dropout_forward: the kernels take a bool or uint8 keep mask"):
        DO.dropout_forward_cuda(x, keep.astype(np.float32), 0.3, version=version)
    with pytest.raises(ValueError, match="dropout_forward: keep has shape"):
        DO.dropout_forward_cuda(x, keep[:3], 0.3, version=version)
    with pytest.raises(TypeError, match="dropout_forward: x: kernels take float32, got float64"):
        DO.dropout_forward_cuda(x.astype(np.float64), keep, 0.3, version=version)


# ---------------------------------------------------------------- NVRTC, for these families' files

# test_nvrtc_all.py compiles every kernels/*.cu; here the files of the elementwise,
# bias, batchnorm, embedding, bce and adam families must also compile without a warning,
# and the emulator must expose exactly the kernels NVRTC compiled
FAMILIES = ("activation", "dropout", "bias", "batchnorm", "embedding", "bce", "adam")
_DECL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


@pytest.mark.parametrize("arch", ("sm_80", "sm_90"))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_compiles_cleanly_with_nvrtc(family, arch):
    if cuda_emu.nvrtc_library() is None:
        pytest.skip("no libnvrtc.so (pip install nvidia-cuda-nvrtc-cu12)")
    path = _launch.kernel_path(family)
    r = cuda_emu.nvrtc_check(str(path), arch=arch, options=_launch.compile_options())
    assert "warning" not in r.log, f"{path.name} ({arch}):\n{r.log}"
    declared = _DECL.findall(path.read_text())
    assert all(name.encode() + b"\x00" in r.binary for name in declared)
    if arch == "sm_80":
        mod = cuda_emu.RawModule(path=str(path), options=_launch.compile_options())
        assert sorted(mod.kernel_names) == sorted(declared)
