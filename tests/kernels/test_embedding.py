"""kernels/embedding.cu against cganraw.ops.embedding's NumPy reference, through the
emulator: the gather forward, the atomicAdd scatter backward (v1) and the deterministic
segmented backward (v2, the default), on odd sizes, a batch of 1, the cGAN's label
embeddings (K classes, D = 50) at batch 3, and batches whose labels all repeat (every
thread adds into one row)."""
import numpy as np
import pytest

from cganraw import backend, cuda_emu, nn
from cganraw.ops import embedding as E
from tests.kernels.conftest import assert_close

# (N, K, D): single values, odd sizes (17*33 and 45*129 outputs), a batch of 1, the cGAN's
# Embedding(K, 50) at batch 3 for MNIST (10), EMNIST letters (26) and balanced (47)
CASES = [(1, 1, 1), (7, 3, 5), (17, 10, 33), (45, 7, 129), (1, 47, 50), (3, 10, 50), (3, 26, 50), (3, 47, 50),
         (64, 26, 50)]


def _ids(cases):
    return ["N%d-K%d-D%d" % c for c in cases]


@pytest.mark.parametrize("n, k, d", CASES, ids=_ids(CASES))
def test_embedding_kernels_match_reference(n, k, d, rng):
    W = rng.standard_normal((k, d)).astype(np.float32)
    labels = rng.integers(0, k, n)             # int64, as the layers hold them
    dy = rng.standard_normal((n, d)).astype(np.float32)
    y, cache = E.embedding_forward_cuda(labels, W)
    y_r, cache_r = E.embedding_forward_numpy(labels, W)
    assert_close(y, y_r, 0, 1e-7, f"embedding_forward_v1 {n, k, d}")
    # float32 sums of repeated labels in atomic (v1) or batch (v2) order vs NumPy's add.at order
    for v in (1, 2):
        assert_close(E.embedding_backward_cuda(dy, cache, version=v), E.embedding_backward_numpy(dy, cache_r),
                     1e-5, 1e-5, f"embedding_backward_v{v} {n, k, d}")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("workers", [1, 2])
def test_backward_all_labels_repeated(workers, version, rng):
    # most rows add into one row of dW. With 2 workers the emulator runs blocks on two OS
    # threads at once, so the atomics really contend (a plain += could lose updates there,
    # though only by chance of timing: ThreadSanitizer is the sure check)
    n, k, d = 3000, 5, 50
    labels = np.full(n, 3, dtype=np.int64)
    labels[::7] = 1
    dy = rng.standard_normal((n, d)).astype(np.float32)
    _, cache = E.embedding_forward_cuda(labels, rng.standard_normal((k, d)).astype(np.float32))
    with cuda_emu.settings(workers=workers):
        dW = E.embedding_backward_cuda(dy, cache, version=version)
        counts = E.embedding_backward_cuda(np.ones((n, d), np.float32), cache, version=version)
    ref = E.embedding_backward_numpy(dy, (labels, (k, d)))
    assert_close(dW, ref, 1e-3, 1e-5, f"scatter-add of repeated labels ({workers} workers)")
    # sums of ones are exact in float32: any lost update shows
    assert np.array_equal(counts[3], np.full(d, np.sum(labels == 3), np.float32))
    assert np.array_equal(counts[1], np.full(d, np.sum(labels == 1), np.float32))
    assert np.all(dW[[0, 2, 4]] == 0)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.int16])
def test_label_dtypes(dtype, rng):
    W = rng.standard_normal((10, 50)).astype(np.float32)
    labels = rng.integers(0, 10, 9).astype(dtype)
    y, cache = E.embedding_forward_cuda(labels, W)
    assert_close(y, W[labels], 0, 1e-7, f"labels of {np.dtype(dtype)}")
    assert cache[0].dtype == np.int32


def test_public_ops_and_layer_dispatch_to_the_kernels(launches, rng):
    assert backend.uses_kernels()
    labels = rng.integers(0, 10, 3)
    dy = rng.standard_normal((3, 50)).astype(np.float32)
    results = {}
    for name in ("emu", "numpy"):
        backend.use(name)
        layer = nn.Embedding(10, 50, rng=np.random.default_rng(3))
        y = layer(labels)
        layer.backward(dy)
        results[name] = (y, layer.weight.grad.copy())
    backend.use("emu")
    assert launches == ["embedding_forward_v1", "embedding_backward_v3"]     # v3 adds into .grad
    assert_close(results["emu"][0], results["numpy"][0], 0, 1e-7, "layer forward emu vs numpy")
    assert_close(results["emu"][1], results["numpy"][1], 1e-6, 1e-6, "layer weight gradient emu vs numpy")


def test_bad_inputs(rng):
    W = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="embedding_forward: W: kernels take float32, got float64"):
        E.embedding_forward(np.arange(3), W.astype(np.float64))
    with pytest.raises(TypeError, match="embedding_forward: indices must be integers, got float32"):
        E.embedding_forward_cuda(np.arange(3, dtype=np.float32), W)
    with pytest.raises(ValueError, match=r"embedding_forward: indices must lie in \[0, 10\), got values from -1 to 2"):
        E.embedding_forward_cuda(np.array([-1, 2]), W)
    with pytest.raises(ValueError, match=r"embedding_forward: indices must lie in \[0, 10\), got values from 0 to 10"):
        E.embedding_forward_cuda(np.array([0, 10]), W)
    with pytest.raises(ValueError, match=r"indices must have shape \(N,\)"):
        E.embedding_forward_cuda(np.zeros((2, 2), np.int64), W)
    _, cache = E.embedding_forward_cuda(np.array([1, 2, 3]), W)
    with pytest.raises(ValueError, match=r"embedding_backward: dy has shape \(3, 5\), expected \(3, 4\)"):
        E.embedding_backward_cuda(np.zeros((3, 5), np.float32), cache)
    # strided views: labels, weight and gradient
    labels = np.array([4, 0, 9, 9, 2, 1], dtype=np.int64)[::2]
    Wv = rng.standard_normal((10, 8)).astype(np.float32)[:, ::2]
    y, cache = E.embedding_forward_cuda(labels, Wv)
    assert_close(y, Wv[labels], 0, 1e-7, "gather from strided W with strided labels")
    dyv = rng.standard_normal((3, 8)).astype(np.float32)[:, 1::2]
    assert_close(E.embedding_backward_cuda(dyv, cache), E.embedding_backward_numpy(dyv, (labels, (10, 4))),
                 1e-6, 1e-6, "scatter of a strided dy")
    # empty batch
    y, cache = E.embedding_forward_cuda(np.zeros(0, np.int64), W)
    assert y.shape == (0, 4)
    assert np.all(E.embedding_backward_cuda(np.zeros((0, 4), np.float32), cache) == 0)


def test_v2_backward_is_deterministic_and_in_batch_order(all_orders, rng):
    # the same bits in every thread order and with parallel blocks; the sum runs over the
    # batch in order, exactly as a float32 loop does; D > the block (two d passes), 1500
    # labels (two shared-memory chunks)
    n, k, d = 1500, 6, 300
    labels = rng.integers(0, k, n)
    dy = rng.standard_normal((n, d)).astype(np.float32)
    _, cache = E.embedding_forward_cuda(labels, rng.standard_normal((k, d)).astype(np.float32))
    runs = []
    for workers in (1, 2):
        with cuda_emu.settings(workers=workers):
            runs.append(E.embedding_backward_cuda(dy, cache, version=2))
    assert np.array_equal(runs[0], runs[1])
    want = np.zeros((k, d), np.float32)
    for i in range(n):
        want[labels[i]] += dy[i]
    assert np.array_equal(runs[0], want)


@pytest.mark.parametrize("n, k, d", CASES, ids=_ids(CASES))
def test_v3_adds_into_out_as_v2_then_an_add(n, k, d, all_orders, rng):
    # v3 adds each row's sum into the gradient given: the bits of v2's dW added to it
    labels = rng.integers(0, k, n)
    dy = rng.standard_normal((n, d)).astype(np.float32)
    _, cache = E.embedding_forward_cuda(labels, rng.standard_normal((k, d)).astype(np.float32))
    before = rng.standard_normal((k, d)).astype(np.float32)
    got = before.copy()
    assert E.embedding_backward_cuda(dy, cache, out=got) is got           # v3, the default with out
    np.testing.assert_array_equal(got, before + E.embedding_backward_cuda(dy, cache, version=2))
    with pytest.raises(ValueError, match="kernel version 3 adds into `out`: give one"):
        E.embedding_backward_cuda(dy, cache, version=3)


# ---------------------------------------------------------------- the label path, fused
# (N, L, K, E, M, x_bias, slope): one row, odd sizes, rows past one split (32) and past a
# block of columns (256), D's (L = M = 784, no bias or activation) and G's (L = w*49 with
# the noise Linear's bias and LeakyReLU, M = 49) at small widths, EMNIST's 47 classes
LABEL_CASES = [(1, 1, 2, 1, 1, True, 0.0), (5, 13, 4, 3, 7, True, 0.2), (37, 33, 10, 50, 49, False, None),
               (3, 784, 10, 50, 784, False, None), (7, 196, 47, 50, 49, True, 0.2), (70, 300, 3, 5, 9, True, 0.2)]


def _label_case(rng, n, ln, k, e, m, has_bx):
    x = rng.standard_normal((n, ln)).astype(np.float32)
    labels = rng.integers(0, k, n)
    emb_w, fc_w = rng.standard_normal((k, e)).astype(np.float32), rng.standard_normal((m, e)).astype(np.float32)
    fc_b = rng.standard_normal(m).astype(np.float32)
    xb = rng.standard_normal(ln).astype(np.float32) if has_bx else None
    return x, labels, emb_w, fc_w, fc_b, xb


@pytest.mark.parametrize("version", E.LABEL_FORWARD_VERSIONS)
@pytest.mark.parametrize("n, ln, k, e, m, has_bx, slope", LABEL_CASES, ids=[str(c[:5]) for c in LABEL_CASES])
def test_label_map_concat_matches_reference(n, ln, k, e, m, has_bx, slope, version, all_orders, rng):
    x, labels, emb_w, fc_w, fc_b, xb = _label_case(rng, n, ln, k, e, m, has_bx)
    out, cache = E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, slope, version=version)
    out_r, cache_r = E.label_map_concat_forward_numpy(x, labels, emb_w, fc_w, fc_b, xb, slope)
    assert_close(out, out_r, 1e-5 * e, 1e-5, "forward")      # the table's dot products: another order
    # the x part is a copy, a bias add and a select: exact
    np.testing.assert_array_equal(out[:, :ln], out_r[:, :ln])
    if version == 2:      # each value the dot product in e order (float64 products of float32: close)
        lab = np.asarray(emb_w, np.float64)[labels] @ np.asarray(fc_w, np.float64).T + fc_b
        assert_close(out[:, ln:], lab, 2e-6 * e, 1e-5, "v2 against float64")
    d = rng.standard_normal(out.shape).astype(np.float32)
    ref = E.label_map_concat_backward_numpy(d, cache_r)
    for splits, table_grads in ((None, None), (1, 1), (3, 2), (n, 1)):
        got = E.label_map_concat_backward_cuda(d, cache, splits=splits, table_grads=table_grads)
        for name, a, b in zip(("dx", "dx_bias", "demb_w", "dfc_w", "dfc_b"), got, ref):
            assert (a is None) == (b is None), name
            if a is not None:
                assert_close(a, b, 1e-4 * max(1, m // 49), 1e-5,
                             f"{name} splits={splits} table_grads={table_grads} ({all_orders} order)")
        np.testing.assert_array_equal(got[0], ref[0])      # a select and a multiply: exact
    # the table gradients' kernel (2) against the two GEMMs (1), added into given arrays too
    grads1 = E.label_map_concat_backward_cuda(d, cache, table_grads=1)
    outs = [rng.standard_normal(emb_w.shape).astype(np.float32), rng.standard_normal(fc_w.shape).astype(np.float32)]
    before = [o.copy() for o in outs]
    got = E.label_map_concat_backward_cuda(d, cache, demb_out=outs[0], dfc_w_out=outs[1])
    assert got[2] is None and got[3] is None
    for o, b0, g1, name in zip(outs, before, grads1[2:4], ("demb_w", "dfc_w")):
        assert_close(backend.asnumpy(o) - b0, g1, 2e-4 * max(1, m // 49), 1e-4, f"{name} added into .grad")


def test_label_map_concat_reference_is_the_unfused_layers(rng):
    # numpy: the fused reference repeats Embedding -> Linear -> Concat (and the noise
    # Linear's bias + LeakyReLU) operation by operation: the same bits
    x, labels, emb_w, fc_w, fc_b, xb = _label_case(rng, 6, 12, 5, 4, 3, True)
    out, _ = E.label_map_concat_forward_numpy(x, labels, emb_w, fc_w, fc_b, xb, 0.2)
    h = x + xb
    h = np.where(h > 0, h, h * np.float32(0.2))
    np.testing.assert_array_equal(out, np.concatenate([h, emb_w[labels] @ fc_w.T + fc_b], axis=1))


def test_label_map_concat_gradients_by_finite_differences(rng):
    # float64: every gradient of the reference against central differences of <out, R>
    n, ln, k, e, m = 5, 4, 3, 2, 3
    x, labels, emb_w, fc_w, fc_b, xb = (a.astype(np.float64) if a is not None and a.dtype.kind == "f" else a
                                        for a in _label_case(rng, n, ln, k, e, m, True))
    x = x + np.sign(x) * 0.05                                 # no pre-activation near the kink
    R = rng.standard_normal((n, ln + m))
    args = dict(x=x, emb_w=emb_w, fc_w=fc_w, fc_b=fc_b, x_bias=xb)

    def f(**kw):
        a = {**args, **kw}
        out, _ = E.label_map_concat_forward_numpy(a["x"], labels, a["emb_w"], a["fc_w"], a["fc_b"], a["x_bias"], 0.2)
        return float((out * R).sum())
    _, cache = E.label_map_concat_forward_numpy(x, labels, emb_w, fc_w, fc_b, xb, 0.2)
    dx, dbx, demb, dfc_w, dfc_b = E.label_map_concat_backward_numpy(R, cache)
    for name, grad in (("x", dx), ("x_bias", dbx), ("emb_w", demb), ("fc_w", dfc_w), ("fc_b", dfc_b)):
        base = args[name]
        fd = np.empty_like(base)
        for i in range(base.size):
            step = np.zeros_like(base)
            step.flat[i] = 1e-6
            fd.flat[i] = (f(**{name: base + step}) - f(**{name: base - step})) / 2e-6
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7, err_msg=name)


def test_label_map_concat_adds_into_the_grads_and_skips_frozen_labels(rng):
    x, labels, emb_w, fc_w, fc_b, xb = _label_case(rng, 9, 20, 4, 3, 5, True)
    out, cache = E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, 0.2)
    d = rng.standard_normal(out.shape).astype(np.float32)
    fresh = E.label_map_concat_backward_cuda(d, cache)
    before = [rng.standard_normal(a.shape).astype(np.float32) for a in fresh[1:]]
    outs = [b.copy() for b in before]
    got = E.label_map_concat_backward_cuda(d, cache, dx_bias_out=outs[0], demb_out=outs[1], dfc_w_out=outs[2],
                                           dfc_b_out=outs[3])
    assert got[1:] == (None, None, None, None)
    np.testing.assert_array_equal(got[0], fresh[0])
    for name, o, b, f in zip(("dx_bias", "demb_w", "dfc_w", "dfc_b"), outs, before, fresh[1:]):
        assert_close(o, b + f, 1e-5, 1e-5, name)
    np.testing.assert_array_equal(outs[0], before[0] + fresh[1])        # the ordered sums: v's bits
    np.testing.assert_array_equal(outs[3], before[3] + fresh[4])
    # a frozen label path (D in G's step): only dx and x's bias
    dx, dbx, demb, dfc_w, dfc_b = E.label_map_concat_backward_cuda(d, cache, need_label=False)
    assert demb is None and dfc_w is None and dfc_b is None
    np.testing.assert_array_equal(dx, fresh[0])
    np.testing.assert_array_equal(dbx, fresh[1])


def test_label_map_concat_is_reproducible_and_checks_its_inputs(rng):
    x, labels, emb_w, fc_w, fc_b, xb = _label_case(rng, 70, 40, 5, 3, 9, True)
    out, cache = E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, 0.2)
    d = rng.standard_normal(out.shape).astype(np.float32)
    runs = set()
    for order, workers in (("forward", 1), ("reverse", 1), ("random", 2), ("random", 2)):
        with cuda_emu.settings(order=order, seed=5, workers=workers):
            runs.add(b"".join(backend.asnumpy(g).tobytes() for g in E.label_map_concat_backward_cuda(d, cache)))
    assert len(runs) == 1
    with pytest.raises(ValueError, match="must lie in"):
        E.label_map_concat_forward_cuda(x, labels + 5, emb_w, fc_w, fc_b, xb, 0.2)
    with pytest.raises(ValueError, match=r"expected x \(N, L\)"):
        E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w[:, :2], fc_b, xb, 0.2)
    with pytest.raises(ValueError, match=r"x_bias has shape"):
        E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb[:3], 0.2)
    with pytest.raises(ValueError, match="negative_slope >= 0"):
        E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, -0.1)
    with pytest.raises(ValueError, match=r"d has shape"):
        E.label_map_concat_backward_cuda(d[:, 1:], cache)
    with pytest.raises(TypeError, match="kernels take float32"):
        E.label_map_concat_forward_cuda(x.astype(np.float64), labels, emb_w, fc_w, fc_b)


def test_conv_models_run_the_label_path_fused_on_the_kernel_backends(launches, rng):
    # the plain layers: one launch forward (the table's dot products in it), one and the
    # weights' GEMMs backward; wrapped (a spy on the
    # label Linear) or on NumPy: the layers one by one
    from cganraw import models
    G, D = models.build("cgan-conv", 5, width=4, seed=1, batchnorm=True)
    labels = np.array([0, 4, 2])
    img = G(rng.standard_normal((3, 100)).astype(np.float32), labels)
    D.backward(np.ones_like(D(img, labels)))
    G.backward(np.ones_like(img))
    assert launches.count("label_map_concat_forward_v3") == 2
    # G's seed map channel-major (backward_v2), D's image and label map row-major (v1)
    assert launches.count("label_map_concat_backward_v2") == 1 and launches.count("label_map_concat_backward_v1") == 1
    assert "embedding_forward_v1" not in launches and "embedding_backward_v3" not in launches
    launches.clear()
    D.label_fc.forward = D.label_fc.forward            # an instance-level forward: no fusion for D
    D.backward(np.ones_like(D(img, labels)))
    assert "label_map_concat_forward_v3" not in launches and "embedding_forward_v1" in launches


@pytest.mark.parametrize("n, c_x, hw, k, e, has_bx, slope", [(3, 4, 49, 10, 50, True, 0.2), (1, 1, 1, 2, 1, False, None),
                                                            (5, 3, 7, 4, 3, True, 0.0), (7, 2, 9, 47, 5, False, 0.2)])
def test_label_map_concat_channel_major(n, c_x, hw, k, e, has_bx, slope, all_orders, rng):
    # v3 with channel_major_hw (G's seed map): out as (C, N, hw) memory, the values of v2; the
    # backward (v2) reads d in that layout, as an (N, C, H, W) view taken as it lies or any
    # other array copied: v1's gradients, bit for bit
    x, labels, emb_w, fc_w, fc_b, xb = _label_case(rng, n, c_x * hw, k, e, hw, has_bx)
    out2, cache2 = E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, slope, version=2)
    out3, cache3 = E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, slope, channel_major_hw=hw)
    c = c_x + 1
    out2, got = backend.asnumpy(out2), backend.asnumpy(out3)
    assert got.shape == (c, n, hw)
    np.testing.assert_array_equal(got.transpose(1, 0, 2).reshape(n, c * hw), out2)
    np.testing.assert_array_equal(backend.asnumpy(E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb,
                                                                                  slope, version=3)[0]), out2)
    d = rng.standard_normal((n, c * hw)).astype(np.float32)
    ref = E.label_map_concat_backward_cuda(d, cache2)
    xp = backend.get_xp()
    d_view = xp.asarray(np.ascontiguousarray(d.reshape(n, c, hw).transpose(1, 0, 2))).reshape(c, n, hw, 1)
    for dd in (d_view.transpose(1, 0, 2, 3), d.reshape(n, c, hw, 1)):
        got = E.label_map_concat_backward_cuda(dd, cache3)
        for name, a, b in zip(("dx", "dx_bias", "demb_w", "dfc_w", "dfc_b"), got, ref):
            assert (a is None) == (b is None), name
            if a is not None:
                np.testing.assert_array_equal(backend.asnumpy(a), backend.asnumpy(b), err_msg=name)
    with pytest.raises(ValueError, match="d has shape"):
        E.label_map_concat_backward_cuda(d, cache3)
    with pytest.raises(ValueError, match="channel_major_hw needs version 3"):
        E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, slope, version=2, channel_major_hw=hw)
    if hw > 1:
        with pytest.raises(ValueError, match="must divide"):
            E.label_map_concat_forward_cuda(x, labels, emb_w, fc_w, fc_b, xb, slope, channel_major_hw=hw + 1)


@pytest.mark.parametrize("bk", ["emu", "numpy"])
def test_generator_backward_without_dz_on_emu_and_numpy(bk, launches, rng):
    # G.backward(dy, need_dz=False) (the training step: z is no parameter): None back, the
    # same parameter gradients, and on the kernel backends one GEMM fewer
    from cganraw import models
    backend.use(bk)
    try:
        grads, counts = [], []
        z = rng.standard_normal((3, 100)).astype(np.float32)
        for need_dz in (True, False):
            G, _ = models.build("cgan-conv", 5, width=4, seed=1, g_norm="instance")
            img = G(backend.get_xp().asarray(z), backend.get_xp().asarray(np.array([0, 4, 2])))
            launches.clear()
            dz = G.backward(backend.get_xp().ones_like(img), need_dz=need_dz)
            counts.append(len(launches))
            assert (dz is None) == (not need_dz)
            grads.append([backend.asnumpy(p.grad).copy() for p in G.parameters()])
        for a, b in zip(*grads):
            np.testing.assert_array_equal(a, b)
        if bk == "emu":
            assert counts[1] == counts[0] - 1
    finally:
        backend.use("emu")
