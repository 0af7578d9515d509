"""The `cuda` backend's Python, run in CI through the CuPy stand-in (tests/cupy_standin):
every launcher of cganraw.ops, every version, with device arrays, gives what the emu backend
gives (the same kernels run in both, so bit for bit); the training step and the trainer run
on it; and a line tracer proves that every line of the launchers and launch helpers ran
(except those that raise, which the kernel tests drive on emu). The stand-in itself refuses
what CuPy refuses and fails loudly on any CuPy API it lacks."""
import ast
import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cganraw import backend, devicelog, health, models, step
from cganraw.ops import _launch
from cganraw.ops import philox as P
from cganraw.optim import Adam
from tests import cupy_standin

OPS = {name: importlib.import_module(f"cganraw.ops.{name}") for name in
       ("activation", "adam", "batchnorm", "bce", "bias", "conv", "cross_entropy", "dropout", "ema", "embedding",
        "gemm", "instancenorm", "maxpool", "mode_seeking", "philox", "stats")}
TABLE_COVERS = {"adam", "bce", "cross_entropy", "dropout", "ema", "maxpool", "mode_seeking", "philox", "stats"}


@pytest.fixture
def restore_backend():
    prev = backend.current()
    yield
    backend.use(prev)


# ------------------------------------------------------------------ the stand-in itself --

def test_standin_fails_loudly_and_refuses_what_cupy_refuses(restore_backend):
    with cupy_standin.installed() as cp:
        import cupy
        assert cupy is cp and backend.gpu_available()
        with pytest.raises(AttributeError, match="stand-in .* lacks cupy.fft"):
            getattr(cupy, "fft")  # noqa: B009  (the lookup is the test)
        a = cupy.asarray(np.arange(6, dtype=np.float32))
        with pytest.raises(AttributeError, match="lacks cupy.ndarray.searchsorted"):
            a.searchsorted(2)
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            np.asarray(a)
        with pytest.raises(TypeError, match="NumPy array cannot be an operand"):
            a + np.ones(6, np.float32)
        cupy_standin.reset()
        b = (a * 2).sum()
        assert float(b) == 30.0
        assert cupy_standin.counts() == {("elementwise", "multiply"): 1, ("reduction", "sum"): 1, ("d2h", "d2h"): 1,
                                         ("sync", "sync"): 1}
        z = cupy.zeros((3, 4), np.float32)
        z.fill(0)
        z.T.reshape(12)                               # a transposed view: reshaping copies
        assert cupy_standin.counts(("memset", "copy")) == {("memset", "memset"): 2, ("copy", "copy"): 1}
        with pytest.raises(TypeError, match="argument 0"):
            mod = cupy.RawModule(code='extern "C" __global__ void k(float* x) { x[0] = 1; }')
            mod.get_function("k")((1,), (1,), (np.zeros(1, np.float32),))


# ------------------------------------------------------------------ every launcher -------

def _cases(xp_put, rng_seed=5):
    """(name, thunk) pairs calling every launcher and version; thunk() returns arrays to compare.
    xp_put puts a host array on the active backend's device."""
    A, AD, BN, BCE, BI, CV = (OPS[k] for k in ("activation", "adam", "batchnorm", "bce", "bias", "conv"))
    CE, DR, EMA, EMB, GE, MP, ST = (OPS[k] for k in ("cross_entropy", "dropout", "ema", "embedding", "gemm",
                                                     "maxpool", "stats"))
    r = np.random.default_rng(rng_seed)
    f32 = lambda *s: r.standard_normal(s).astype(np.float32)
    put = lambda a: xp_put(np.ascontiguousarray(a))
    cases = []
    for v in (1, 2):
        x, dy = f32(3, 7, 5), f32(3, 7, 5)
        for op, extra in (("leaky_relu", (0.1,)), ("relu", ()), ("tanh", ()), ("sigmoid", ())):
            def act(op=op, extra=extra, v=v, x=x, dy=dy):
                y, cache = getattr(A, f"{op}_forward_cuda")(put(x).transpose(0, 2, 1), *extra, version=v)
                return [y, getattr(A, f"{op}_backward_cuda")(put(dy).transpose(0, 2, 1), cache, version=v)]
            cases.append((f"{op} v{v}", act))

        def adam(v=v):
            p = f32(9, 4)
            g = f32(9, 4)
            pd, md, vd = put(p), put(np.zeros_like(p)), put(np.zeros_like(p))
            AD.adam_update_cuda(pd, put(g), md, vd, 1e-3, 0.5, 0.999, 1e-8, 2, 0.01, version=v)
            big = put(np.zeros((9, 8), np.float32))
            AD.adam_update_cuda(big[:, ::2], put(g), put(np.zeros_like(g)), put(np.zeros_like(g)), 1e-3, 0.5, 0.999,
                                1e-8, 1, version=v)
            return [pd, md, vd, big]
        cases.append((f"adam v{v}", adam))

        def batchnorm(v=v):
            x = f32(3, 5, 2, 3)
            x1 = f32(4, 6)
            out = []
            for xx in (x, x1):
                c = xx.shape[1]
                g, b = put(np.ones(c, np.float32) * 1.5), put(np.full(c, 0.1, np.float32))
                y, cache, mean, var = BN.batchnorm_forward_cuda(put(xx), g, b, version=v)
                out += [y, mean, var, *BN.batchnorm_backward_cuda(put(np.ones_like(xx)), cache, version=v)]
                rm, rv = put(np.zeros(c, np.float32)), put(np.ones(c, np.float32))
                BN.batchnorm_running_update_cuda(rm, rv, mean, var, 0.1)
                y2, cache2, _, _ = BN.batchnorm_forward_cuda(put(xx), g, b, rm, rv, version=v)
                out += [rm, rv, y2, *BN.batchnorm_backward_cuda(put(np.ones_like(xx)), cache2, version=v)]
            strided = put(np.zeros((2, 5), np.float32))
            BN.batchnorm_running_update_cuda(strided[0], strided[1], put(np.ones(5, np.float32)),
                                             put(np.ones(5, np.float32)), 0.5)
            return out + [strided]
        cases.append((f"batchnorm v{v}", batchnorm))

        def bce(v=v):
            x = f32(7, 1)
            t = r.uniform(0, 1, (7, 1)).astype(np.float32)
            loss, cache = BCE.bce_with_logits_forward_cuda(put(x), put(t), version=v)
            out = put(np.zeros((9, 1), np.float32))
            BCE.bce_with_logits_backward_cuda(0.5, cache, version=v, out=out[1:8])     # into a slice
            return [loss, BCE.bce_with_logits_backward_cuda(1.0, cache, version=v), out]
        cases.append((f"bce v{v}", bce))

        def bias(v=v):
            y = f32(3, 4, 5, 7)
            y2 = f32(5, 3)
            yd = put(y)
            BI.bias_add_forward_cuda(yd, put(np.arange(4, dtype=np.float32)), version=v)
            y2d = put(np.zeros((5, 6), np.float32))[:, ::2]        # a strided view: written back
            BI.bias_add_forward_cuda(y2d, put(np.arange(3, dtype=np.float32)), version=v)
            return [yd, y2d, BI.bias_add_backward_cuda(put(y), version=v), BI.bias_add_backward_cuda(put(y2), version=v),
                    BI.bias_add_backward_cuda(put(np.zeros((3, 0), np.float32)), version=v),
                    BI.bias_add_backward_cuda(put(np.zeros((0, 3, 2, 2), np.float32)), version=v)]
        cases.append((f"bias v{v}", bias))

        def col2im(v=v):
            cols = f32(3 * 9, 2 * 4 * 4)
            return [CV.col2im_cuda(put(cols), (2, 3, 7, 7), 3, 2, 1, version=v),
                    CV.col2im_cuda(put(f32(2 * 16, 2 * 9)), (2, 2, 7, 7), 4, 2, 1, out_hw=(3, 3), version=v)]
        cases.append((f"col2im v{v}", col2im))

        def dropout_mask(v=v):
            x = f32(5, 9)
            dy = f32(5, 9)
            keep = r.uniform(size=(5, 9)) > 0.3
            y, cache = DR.dropout_forward_cuda(put(x), put(keep), 0.3, version=v)
            y8, cache8 = DR.dropout_forward_cuda(put(x), put(keep.astype(np.uint8)), 0.3, version=v)
            return [y, DR.dropout_backward_cuda(put(dy), cache, version=v), y8, DR.dropout_backward_cuda(put(dy), cache8)]
        cases.append((f"dropout mask v{v}", dropout_mask))

        def ema(v=v):
            a = f32(11)
            b = f32(11)
            ad = put(a)
            EMA.ema_update_cuda(ad, put(b), 0.9, version=v)
            wide = put(np.zeros((11, 2), np.float32))
            EMA.ema_update_cuda(wide[:, 0], put(b), 0.5, version=v)
            return [ad, wide]
        cases.append((f"ema v{v}", ema))

        def maxpool(v=v):
            x = f32(2, 3, 7, 6)
            y, cache = MP.maxpool2d_forward_cuda(put(x), 2)
            return [y, MP.maxpool2d_backward_cuda(put(np.ones(y.shape, np.float32)), cache, version=v)]
        cases.append((f"maxpool v{v}", maxpool))

    def bias_leaky_relu():
        y, b = f32(3, 4, 5, 5), f32(4)
        out, cache = BI.bias_leaky_relu_forward_cuda(put(y), put(b), 0.2)
        empty, cache0 = BI.bias_leaky_relu_forward_cuda(put(np.zeros((0, 4, 5, 5), np.float32)), put(b), 0.2)
        return [out, *BI.bias_leaky_relu_backward_cuda(put(f32(3, 4, 5, 5)), cache),
                *BI.bias_leaky_relu_backward_cuda(put(np.zeros((0, 4, 5, 5), np.float32)), cache0)]
    cases.append(("bias_leaky_relu", bias_leaky_relu))

    def bias_tanh():
        y, b = f32(3, 4, 5, 5), f32(4)
        out, cache = BI.bias_tanh_forward_cuda(put(y), put(b))
        empty, cache0 = BI.bias_tanh_forward_cuda(put(np.zeros((0, 4, 5, 5), np.float32)), None)
        grad = put(f32(4))
        return [out, *BI.bias_tanh_backward_cuda(put(f32(3, 4, 5, 5)), cache),
                BI.bias_tanh_backward_cuda(put(f32(3, 4, 5, 5)), cache, out=grad)[0], grad,
                *BI.bias_tanh_backward_cuda(put(np.zeros((0, 4, 5, 5), np.float32)), cache0)]
    cases.append(("bias_tanh", bias_tanh))

    def one_launch_reductions():
        # the one-launch bias reductions (v5 on a channel slice, into .grad), their two-launch
        # forms, and every loss term of a step in one BCE launch (into a given array too)
        y, dy = f32(3, 4, 5, 7), put(f32(3, 4, 5, 5))
        acc = put(np.ones(4, np.float32))
        BI.bias_add_backward_cuda(put(y), version=3, out=acc)
        BI.bias_add_backward_cuda(put(y), version=5, out=acc)
        _, cache = BI.bias_leaky_relu_forward_cuda(put(f32(3, 4, 5, 5)), put(f32(4)), 0.2)
        outs = [acc, BI.bias_add_backward_cuda(put(f32(3, 2, 6, 6))[:, 1:2]), BI.bias_add_backward_cuda(put(y), version=3),
                *BI.bias_leaky_relu_backward_cuda(dy, cache, one_launch=False),
                *BI.bias_leaky_relu_backward_to_channel_major_cuda(dy, cache, one_launch=False),
                *BI.bias_leaky_relu_backward_to_channel_major_cuda(dy, cache)]
        x = put(f32(9, 1))
        losses, dx = BCE.bce_with_logits_segments_cuda(x, [0.9, 0.0, 0.0], [1.0, 2.0, 1.0])
        into = put(np.zeros((9, 1), np.float32))
        BCE.bce_with_logits_segments_cuda(x, [1.0], [0.5], out=into)
        # a launch that fails (a float64 array for a float* argument) resets the block counter
        _launch.grid_counter()[...] = 3
        with pytest.raises(TypeError):
            _launch.function("bias", "bias_add_backward_v5")((1,), (32,), (put(np.zeros(3, np.float64)),))
        outs.append(_launch.grid_counter())
        # BatchNorm + LeakyReLU updating its running statistics in its pass; the fused label
        # path and InstanceNorm + LeakyReLU on an empty batch
        BNo, EMB, INo = OPS["batchnorm"], OPS["embedding"], OPS["instancenorm"]
        rm, rv = put(np.zeros(3, np.float32)), put(np.ones(3, np.float32))
        yb = BNo.batchnorm_leaky_relu_forward_cuda(put(f32(4, 3, 2, 2)), put(np.ones(3, np.float32)),
                                                   put(np.zeros(3, np.float32)), running=(rm, rv, 0.1))[0]
        out0, cache0 = EMB.label_map_concat_forward_cuda(put(f32(0, 4)), put(np.zeros(0, np.int64)), put(f32(3, 2)),
                                                         put(f32(5, 2)), put(f32(5)))
        grads0 = EMB.label_map_concat_backward_cuda(put(np.zeros((0, 9), np.float32)), cache0)
        prev = OPS["gemm"].set_gemm_impl("library")        # v1's table GEMM: cuBLAS on both sides
        try:
            out1 = EMB.label_map_concat_forward_cuda(put(f32(3, 4)), put(np.array([0, 2, 1], np.int64)),
                                                     put(f32(3, 2)), put(f32(5, 2)), put(f32(5)), put(f32(4)), 0.2,
                                                     version=1)[0]
            d1 = put(f32(3, 9))
            cache1 = EMB.label_map_concat_forward_cuda(put(f32(3, 4)), put(np.array([0, 2, 1], np.int64)),
                                                       put(f32(3, 2)), put(f32(5, 2)), put(f32(5)))[1]
            grads1 = EMB.label_map_concat_backward_cuda(d1, cache1, table_grads=1)
            outs += [g for g in grads1 if g is not None]
        finally:
            OPS["gemm"].set_gemm_impl(prev)
        out2 = EMB.label_map_concat_forward_cuda(put(f32(0, 4)), put(np.zeros(0, np.int64)), put(f32(3, 2)),
                                                 put(f32(5, 2)), put(f32(5)), version=1)[0]
        outs += [out1, out2]
        _, in_cache0, _, _ = INo.instancenorm_leaky_relu_forward_cuda(put(f32(0, 3, 2, 2)), put(f32(3)), put(f32(3)))
        in0 = INo.instancenorm_leaky_relu_backward_cuda(put(np.zeros((0, 3, 2, 2), np.float32)), in_cache0)
        outs += [yb, rm, rv, out0, grads0[2], grads0[3], grads0[4], in0[1], in0[2]]
        # G's average with its buffers' copy in the same launch
        avg, dst = put(f32(11)), put(np.zeros(4, np.float32))
        OPS["ema"].ema_update_cuda(avg, put(f32(11)), 0.9, copy=(dst, put(f32(4))))
        outs += [avg, dst]
        # the concatenation (the label paths no longer run one: fused) on its own
        both = _launch.concatenate([put(f32(2, 3)), put(f32(2, 1))], axis=1)
        return outs + [losses, dx, into, both]
    cases.append(("one-launch reductions", one_launch_reductions))

    def dropout_stream():
        x = f32(5, 9)
        dy = f32(5, 9)
        y, cache = DR.dropout_forward_cuda(put(x), P.Stream(3, P.DROPOUT, 4, 1), 0.3)
        return [y, DR.dropout_backward_cuda(put(dy), cache)]
    cases.append(("dropout v3", dropout_stream))

    def im2col():
        x = f32(2, 3, 7, 7)
        return [CV.im2col_cuda(put(x), 3, 2, 1), CV.im2col_cuda(put(x)[:, :, ::2, ::2], 2, 1, 0)]
    cases.append(("im2col", im2col))

    def cross_entropy():
        z = f32(6, 5)
        y = r.integers(0, 5, 6)
        loss, cache = CE.softmax_cross_entropy_forward_cuda(put(z), put(y))
        return [loss, *cache, CE.softmax_cross_entropy_backward_cuda(2.0, cache),
                CE.softmax_cross_entropy_backward_cuda(1.0, (cache[0], put(y)))]
    cases.append(("cross_entropy", cross_entropy))

    def embedding():
        W = f32(5, 4)
        idx = np.array([4, 0, 4, 2])
        y, cache = EMB.embedding_forward_cuda(put(idx), put(W))
        grad = put(np.ones((5, 4), np.float32))
        EMB.embedding_backward_cuda(put(np.ones((4, 4), np.float32)), cache, out=grad)
        return [y, EMB.embedding_backward_cuda(put(f32(4, 4)), cache), grad]
    cases.append(("embedding", embedding))

    for v in (1, 2, 3):
        def gemm(v=v):
            a = f32(13, 6)
            b = f32(6, 17)
            c = f32(13, 17)
            out = put(c)
            GE.gemm_cuda(put(a), put(b), alpha=0.5, beta=1.0, out=out, version=v)
            return [GE.gemm_cuda(put(a), put(b), version=v), GE.gemm_cuda(put(a.T), put(b), trans_a=True, version=v),
                    GE.gemm_cuda(put(a), put(b.T).T, version=v), out,
                    GE.gemm_cuda(put(a)[:0], put(b), version=v)]
        cases.append((f"gemm v{v}", gemm))

    def gemm_library():
        a = f32(13, 6)
        b = f32(6, 17)
        c = f32(13, 17)
        prev = GE.set_gemm_impl("library")
        try:
            out = put(c)
            GE.gemm(put(a), put(b.T), trans_b=True, beta=1.0, out=out)
            return [GE.gemm(put(a), put(b)), out]
        finally:
            GE.set_gemm_impl(prev)
    cases.append(("gemm library", gemm_library))

    def philox():
        s = P.Stream(77, 5, 6, 7)
        for _ in range(_launch._CHECKED_KEPT + 2):       # more marked label arrays than are kept
            P.philox_integers(2, 0, 3, s)
        out = put(np.zeros(9, np.float32))
        ints = put(np.zeros(9, np.int32))
        return [P.philox_bits_cuda(9, s, block0=3), P.philox_normal_cuda((3, 3), s), P.philox_normal_cuda((9,), s, out=out),
                P.philox_integers_cuda(9, 0, 7, s, fold=4), P.philox_integers_cuda(9, 2, 5, s, out=ints),
                P.philox_shift_labels_cuda(put(np.arange(9) % 7), 7, s),
                P.philox_shift_labels_cuda(put(np.arange(9, dtype=np.int32) % 7), 7, s, out=put(np.zeros(9, np.int32))),
                *P.philox_step_draws_cuda(put(np.arange(9, dtype=np.int32) % 7), 10, 7, P.Key(77, 6), 3, fold=4),
                *P.philox_step_draws_cuda(put(np.arange(9, dtype=np.int32) % 7), 0, 7, P.Key(77, 6), 2)]
    cases.append(("philox", philox))

    def instancenorm_strided():
        mean = f32(3, 4)
        var = np.abs(f32(3, 4)) + 1
        stats = put(np.zeros((2, 4, 2), np.float32))        # running statistics as strided device views
        OPS["instancenorm"].instancenorm_running_update_cuda(stats[0, :, 0], stats[1, :, 0], put(mean), put(var),
                                                             0.1, 9)
        return [stats]
    cases.append(("instancenorm strided", instancenorm_strided))

    def stats():
        lr = np.float32(0.5)
        lf = np.float32(0.25)
        xr = f32(4, 1)
        xf = f32(4, 1)
        flag = put(np.zeros(4, np.int32))
        s1 = ST.step_stats_cuda(put(np.array(lr)), put(np.array(lf)), None, put(np.array(np.float32(0.7))), None, 1.0,
                                put(xr), put(xf), flag, 3, 1e4, 0b11111)
        s2 = ST.step_stats_cuda(put(np.array(lr)), put(np.array(np.float32(np.nan))), put(np.array(lf)),
                                put(np.array(lf)), put(np.array(lf)), 2.0, put(xr), put(xf), flag, 4, 1e4, 0b11111)
        return [s1, s2, flag]
    cases.append(("step_stats", stats))

    def mode_seeking():
        x = f32(6, 1, 4, 4)
        z = f32(6, 3)
        loss, cache = OPS["mode_seeking"].mode_seeking_forward_cuda(put(x), put(z))
        return [loss, OPS["mode_seeking"].mode_seeking_backward_cuda(cache)]
    cases.append(("mode_seeking", mode_seeking))
    return cases


def _flat(results):
    for a in results:
        if isinstance(a, (tuple, list)):
            yield from _flat(a)
        elif backend.is_array(a):
            yield np.asarray(backend.asnumpy(a))


def _run_cases(bk):
    backend.use(bk)
    put = backend.get_xp().asarray if bk == "cuda" else (lambda a: np.array(a, copy=True))
    return {name: list(_flat(thunk())) for name, thunk in _cases(put)}


def _functions(module, wanted):
    for name, fn in vars(module).items():
        if inspect.isfunction(fn) and fn.__module__ == module.__name__ and wanted(name):
            yield fn


def _required_lines(fn):
    """The executable lines of fn, less those of its raise statements."""
    src, first = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(src)))
    raising = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise):
            raising.update(range(node.lineno + first - 1, node.end_lineno + first))
    lines = {ln for _, _, ln in fn.__code__.co_lines() if ln is not None} - {fn.__code__.co_firstlineno}
    return lines - raising


# the glue: every launcher (names ending in _cuda) and helper that only the kernel backends
# run, in cganraw.ops and the launch module
GLUE_HELPERS = {
    "activation": ("_unary_forward", "_binary_backward"), "batchnorm": ("_channel_launch", "_per_channel"),
    "dropout": ("_dropout_launch", "_stream_launch", "_mask_bytes"), "gemm": ("_operand", "_launch_config"),
    "philox": ("_grid", "_count"), "stats": ("_scalar_arg",), "conv": ("_float32", "_conv_args"),
    "maxpool": ("_pool_args",),
}
LAUNCH_GLUE = ("module", "function", "forget_modules", "grid_for", "i32", "f32", "u32", "arg", "empty", "zeros",
               "fill_zero", "contiguous", "copy_into", "concatenate", "add_into", "check_version", "pick_version",
               "element_count", "elementwise_launch", "warp_block", "split_channels", "writable", "write_back",
               "mark_labels_checked", "labels_checked", "check_labels_range", "labels_arg", "cached_labels_arg")


def _glue():
    """The launch module's helpers and the step's own ops, whose every line the table and
    the step below run (every op's launchers are proven, with the kernel suite, in
    test_the_kernel_suite_passes_on_the_cuda_backend_through_the_standin)."""
    fns = []
    for name, mod in OPS.items():
        if name not in TABLE_COVERS:
            continue
        helpers = GLUE_HELPERS.get(name, ())
        fns += list(_functions(mod, lambda n, h=helpers: n.endswith("_cuda") or n in h))
    fns += list(_functions(_launch, lambda n: n in LAUNCH_GLUE))
    fns += [_launch.Kernel.__call__, _launch.Kernel.__init__]
    return fns


def test_every_launcher_equals_emu_and_every_glue_line_runs(restore_backend):
    glue = _glue()
    targets = {fn.__code__: fn for fn in glue}
    seen = set()

    def tracer(frame, event, arg):
        if frame.f_code in targets:
            def local(frame, event, arg):
                if event == "line":
                    seen.add((frame.f_code, frame.f_lineno))
                return local
            return local
        return None

    # emu modules that earlier tests built would skip module()'s emu branch: build them here
    _launch.forget_modules("emu")
    sys.settrace(tracer)
    try:
        ref = _run_cases("emu")
        with cupy_standin.installed(), devicelog.recording() as log:
            got = _run_cases("cuda")
            # the training step through every layer, on the cuda glue
            G, D = models.build("cgan-conv", 5, width=4, seed=1, batchnorm=True)
            x, y = step.upload_batch(np.zeros((3, 1, 28, 28), np.float32), np.array([0, 4, 2]), 5)
            step.train_step(G, D, Adam(G.parameters()), Adam(D.parameters()), x, y, P.Key(1, 2), mismatch=1.0,
                            mode_seeking=1.0, flag=health.LossFlag()).fetch()
    finally:
        sys.settrace(None)
    assert log.launches and got.keys() == ref.keys()
    for name in ref:
        assert len(got[name]) == len(ref[name]), name
        for i, (a, b) in enumerate(zip(got[name], ref[name])):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} result {i}: cuda glue differs from emu")
    missing = []
    for fn in glue:
        lines = sorted(_required_lines(fn) - {ln for code, ln in seen if code is fn.__code__})
        if lines:
            missing.append(f"{fn.__module__}.{fn.__qualname__}: lines {lines}")
    assert not missing, "cuda glue never ran under the stand-in:\n" + "\n".join(missing)


# ------------------------------------------------------------------ step and trainer -----

@pytest.fixture
def library_gemm():
    """GEMMs by the library on both backends (cuBLAS's stand-in on cuda, NumPy's BLAS on emu),
    so that the two runs do the same arithmetic."""
    prev = OPS["gemm"].set_gemm_impl("library")
    yield
    OPS["gemm"].set_gemm_impl(prev)


@pytest.mark.parametrize("name", models.MODELS)
def test_train_step_on_the_cuda_glue_equals_emu(name, restore_backend, library_gemm):
    def run(bk):
        backend.use(bk)
        G, D = models.build(name, 6, width=4, seed=2, batchnorm=True)
        opts = Adam(G.parameters()), Adam(D.parameters())
        G_ema = models.build(name, 6, width=4, seed=2, batchnorm=True)[0]
        G_ema.load_state_dict(G.state_dict())
        flag = health.LossFlag()
        rng = np.random.default_rng(3)
        for i in range(2):
            x, y = step.upload_batch(rng.uniform(-1, 1, (4, 1, 28, 28)), rng.integers(0, 6, 4),
                                     6 if G.conditional else None)
            stats = step.train_step(G, D, *opts, x, y if G.conditional else None, P.Key(9, i), 0.1, 1.0, 0.5, flag=flag)
            step.update_ema(G_ema, G, 0.9)
        return stats.fetch(), G_ema.state_dict(), D.state_dict()
    ref = run("emu")
    with cupy_standin.installed():
        got = run("cuda")
    assert got[0] == ref[0]
    for a, b in zip(got[1:], ref[1:]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_trainer_runs_and_resumes_on_the_cuda_backend(tmp_path, restore_backend):
    from cganraw import checkpoint, train
    from tests.synthetic import write_emnist
    data = tmp_path / "data"
    write_emnist(data, "letters", np.random.default_rng(0), n=(24, 8))
    args = ["--dataset", "emnist", "--data-dir", str(data), "--no-download", "--width", "4", "--batch-size", "8",
            "--log-every", "2", "--quiet", "--backend", "cuda"]
    with cupy_standin.installed():
        assert train.main([*args, "--out", str(tmp_path / "a"), "--max-steps", "4"]) == 0
        assert train.main([*args, "--out", str(tmp_path / "b"), "--max-steps", "2"]) == 0
        assert train.main(["--resume", str(tmp_path / "b"), "--max-steps", "4", "--data-dir", str(data),
                           "--no-download", "--quiet"]) == 0
    a, b = checkpoint.load(tmp_path / "a"), checkpoint.load(tmp_path / "b")
    assert a["meta"]["step"] == b["meta"]["step"] == 4 and a["meta"]["backend"] == "cuda"
    for part in ("G", "D", "G_ema", "opt_g", "opt_d"):
        for k in a[part]:
            np.testing.assert_array_equal(a[part][k], b[part][k], err_msg=f"{part}.{k}: resumed run differs")
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2


def test_the_kernel_suite_passes_on_the_cuda_backend_through_the_standin(tmp_path):
    """tests/kernels, every test but those of the emulator itself, on the cuda backend's
    Python with the stand-in for CuPy (bench/gpu_check.sh runs the same with the real one);
    with the launcher cases above, every line of every op's cuda glue runs."""
    import json
    import os
    import pkgutil
    import subprocess

    import cganraw.ops
    root = Path(__file__).resolve().parents[1]
    trace = tmp_path / "lines.json"
    env = {**os.environ, "CGANRAW_KERNEL_TEST_BACKEND": "standin", "PYTHONPATH": str(root),
           "CGANRAW_LINETRACE": str(trace)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p",
                        "tests.cupy_standin.linetrace", "tests/kernels"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    tail = "\n".join(r.stdout.splitlines()[-15:])
    assert r.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail
    seen = {(f, ln) for f, ln in json.loads(trace.read_text())}
    # with the launcher table above, run once more here under a tracer
    def tracer(frame, event, arg):
        if frame.f_code.co_filename.startswith(str(Path(cganraw.ops.__file__).parent)):
            def local(frame, event, arg):
                if event == "line":
                    seen.add((frame.f_code.co_filename, frame.f_lineno))
                return local
            return local
        return None
    prev = backend.current()
    with cupy_standin.installed():
        sys.settrace(tracer)
        try:
            _run_cases("cuda")
        finally:
            sys.settrace(None)
            backend.use(prev)
    missing = []
    for info in pkgutil.iter_modules(cganraw.ops.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"cganraw.ops.{info.name}")
        for fn in _functions(mod, lambda n: n.endswith("_cuda")):
            lines = sorted(_required_lines(fn) - {ln for f, ln in seen if f == fn.__code__.co_filename})
            if lines:
                missing.append(f"{fn.__module__}.{fn.__qualname__}: lines {lines}")
    assert not missing, "cuda glue that never ran on the stand-in:\n" + "\n".join(missing)
