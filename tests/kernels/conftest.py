"""Kernel tests: every kernels/*.cu kernel against the NumPy reference, through the CUDA
emulator (cganraw.cuda_emu) on the CPU, so CI proves the kernels without a GPU.

Each test module here runs on the `emu` backend (the previous backend is restored
afterwards). `order` runs a test once per thread order, for kernels with barriers.

CGANRAW_KERNEL_TEST_BACKEND runs the same tests through the `cuda` backend's Python instead:
"cuda" on a GPU with the real CuPy (bench/gpu_check.sh), "standin" with the CuPy stand-in of
tests/cupy_standin, which runs the kernels in the emulator (tests/test_cupy_standin.py does,
in CI). The tests hand the launchers NumPy arrays; on those backends the host arrays are
uploaded at the launchers' argument checks and in-place results copied back into them, as
a test would do by hand on a GPU.
"""
import contextlib
import os
import sys

import numpy as np
import pytest

from cganraw import backend, cuda_emu

ORDERS = ("forward", "reverse")
BACKEND_ENV = "CGANRAW_KERNEL_TEST_BACKEND"
TEST_BACKEND = os.environ.get(BACKEND_ENV, "emu").strip().lower() or "emu"
if TEST_BACKEND not in ("emu", "cuda", "standin"):
    raise ValueError(f"{BACKEND_ENV}={TEST_BACKEND!r}: choose emu, cuda or standin")


def _host_arrays_uploaded(monkeypatch):
    """On the cuda backend, let the launchers (`*_cuda` of cganraw.ops) take and give the
    tests' NumPy arrays: each call uploads its host arguments, copies what the kernels
    changed in place back into them, and hands back host arrays, the very argument objects
    where a result is one of them (so `cache[2] is gamma` holds as on emu)."""
    import importlib
    import pkgutil

    import cganraw.ops

    def wrap(fn):
        def call(*args, **kwargs):
            uploads = {}

            def up(a):
                if isinstance(a, np.ndarray):
                    d = backend.get_xp().asarray(a)
                    uploads[id(d)] = (d, a)
                    return d
                if isinstance(a, tuple):
                    return tuple(up(x) for x in a)
                return a
            res = fn(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})
            for d, a in uploads.values():
                if a.flags.writeable:
                    a[...] = backend.asnumpy(d)

            def down(r):
                if isinstance(r, tuple):
                    return tuple(down(x) for x in r)
                if backend.is_array(r) and not isinstance(r, np.ndarray):
                    hit = uploads.get(id(r))
                    return hit[1] if hit is not None and hit[0] is r else backend.asnumpy(r)
                return r
            return down(res)
        call.__name__ = fn.__name__
        call.__wrapped__ = fn
        return call

    wrapped = {}
    for info in pkgutil.iter_modules(cganraw.ops.__path__):
        mod = importlib.import_module(f"cganraw.ops.{info.name}")
        for name, fn in list(vars(mod).items()):
            if name.endswith("_cuda") and callable(fn) and getattr(fn, "__module__", None) == mod.__name__:
                wrapped[fn] = wrap(fn)
                monkeypatch.setattr(mod, name, wrapped[fn])
    for mod_name, mod in list(sys.modules.items()):      # launchers the test modules imported by name
        if mod_name.startswith("tests.kernels.") and mod is not None:
            for name, fn in list(vars(mod).items()):
                if callable(fn) and fn in wrapped:
                    monkeypatch.setattr(mod, name, wrapped[fn])

    # launchers a test bound before the patch above: upload where they check arguments
    from cganraw.ops import _launch
    arg, write_back, labels_arg = _launch.arg, _launch.write_back, _launch.labels_arg

    def upload(a, dtype=np.float32, name="array"):
        if isinstance(a, np.ndarray):
            if a.dtype != np.dtype(dtype):
                raise TypeError(f"{name}: kernels take {np.dtype(dtype)}, got {a.dtype}")
            return backend.get_xp().asarray(np.ascontiguousarray(a))
        return arg(a, dtype, name)

    def back(a, ac):
        if isinstance(a, np.ndarray) and not isinstance(ac, np.ndarray):
            a[...] = backend.asnumpy(ac)
            return
        write_back(a, ac)

    def labels(indices, k, op):
        return labels_arg(backend.get_xp().asarray(indices) if isinstance(indices, np.ndarray) else indices, k, op)

    monkeypatch.setattr(_launch, "arg", upload)
    monkeypatch.setattr(_launch, "write_back", back)
    monkeypatch.setattr(_launch, "labels_arg", labels)

    # kernels a test launches itself, or that write into a host `out=`: host arrays go up and
    # come back down after the launch
    launch = _launch.Kernel.__call__

    def kernel_call(self, grid, block, args, **kwargs):
        pairs = [(a, backend.get_xp().asarray(a)) if isinstance(a, np.ndarray) else (None, a) for a in args]
        launch(self, grid, block, tuple(d for _, d in pairs), **kwargs)
        for host, dev in pairs:
            if host is not None and host.flags.writeable:
                host[...] = backend.asnumpy(dev)
    monkeypatch.setattr(_launch.Kernel, "__call__", kernel_call)


# tests of the emulator backend itself (its defaults, its module type, emu against numpy
# through layers), or of a layer fed host arrays: they run on emu only
EMU_ONLY = ("emu", "test_layers_really_launch_the_conv_kernels", "test_spectral_norm.py::test_public_op_dispatch",
            "test_phase_split_runs_no_col2im_and_no_large_matrix", "test_v4_by_name_and_by_tf32_switch",
            "test_col2im_transpose_by_default_on_the_kernel_backends", "test_conv_pair_takes_no_layout_copies",
            "test_bias_add_backward_v5_reads_a_channel_slice_in_place",
            "test_conv_models_run_the_label_path_fused_on_the_kernel_backends",
            "test_group_on_a_packed_d_equals_the_layers_one_by_one",
            "test_leaky_forward_v2_updates_the_running_statistics_in_its_pass",
            "test_leaky_relu_fused_is_reproducible_and_the_pair_fuses_on_the_kernel_backends",
            "test_a_failed_launch_leaves_no_counted_up_block_counter")


def pytest_collection_modifyitems(config, items):
    if TEST_BACKEND == "emu":
        return
    for item in items:
        if any(word in item.nodeid.split("/")[-1] for word in EMU_ONLY) and item.nodeid.startswith("tests/kernels/"):
            item.add_marker(pytest.mark.skip(reason=f"tests the emu backend itself, not {TEST_BACKEND}"))


@pytest.fixture(autouse=True)
def emu_backend(monkeypatch):
    """The emulator backend for every test in tests/kernels (or cuda: see above)."""
    prev = backend.current()
    with contextlib.ExitStack() as stack:
        if TEST_BACKEND == "emu":
            backend.use("emu")
        else:
            if TEST_BACKEND == "standin":
                from tests import cupy_standin
                stack.enter_context(cupy_standin.installed())
            backend.use("cuda")
            _host_arrays_uploaded(monkeypatch)
        try:
            yield
        finally:
            backend.use(prev)


@pytest.fixture(params=ORDERS)
def order(request):
    """Runs a test once per thread order (forward, reverse), seeded."""
    with cuda_emu.order(request.param, seed=7):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def assert_close(got, ref, atol, rtol, what=""):
    """|got - ref| <= atol + rtol * |ref| elementwise (never equality), printing the
    first few mismatches in the manner of llm.c's validate_result."""
    got = backend.asnumpy(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values in the result"
    err = np.abs(got.astype(np.float64) - ref)
    tol = atol + rtol * np.abs(ref)
    bad = np.argwhere(err > tol)
    if len(bad):
        lines = [f"  at {tuple(int(i) for i in idx)}: got {got[tuple(idx)]!r}, ref {ref[tuple(idx)]!r}"
                 for idx in bad[:5]]
        raise AssertionError(f"{what}: {len(bad)} of {ref.size} values off (atol={atol}, rtol={rtol}), "
                             f"max err {err.max():.3g}\n" + "\n".join(lines))


@pytest.fixture
def launches(monkeypatch):
    """The names of the kernels looked up through _launch.function during a test, to
    prove that a public op dispatched to its kernel on the emu backend."""
    from cganraw.ops import _launch

    names = []
    original = _launch.function

    def recording(family, name):
        names.append(name)
        return original(family, name)

    monkeypatch.setattr(_launch, "function", recording)
    return names


@pytest.fixture(params=("forward", "reverse", "random"))
def all_orders(request):
    """Like `order`, with the seeded random order too (for the cheaper barrier kernels)."""
    with cuda_emu.order(request.param, seed=7):
        yield request.param
