"""Kernel tests: every kernels/*.cu kernel against the NumPy reference, through the CUDA
emulator (cganraw.cuda_emu) on the CPU, so CI proves the kernels without a GPU.

Each test module here runs on the `emu` backend (the previous backend is restored
afterwards). `order` runs a test once per thread order, for kernels with barriers.
"""
import numpy as np
import pytest

from cganraw import backend, cuda_emu

ORDERS = ("forward", "reverse")


@pytest.fixture(autouse=True)
def emu_backend():
    """The emulator backend for every test in tests/kernels."""
    prev = backend.current()
    backend.use("emu")
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
