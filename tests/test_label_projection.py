"""nn.LabelProjection (the projection discriminator's label term, <E[y], h>) on the numpy
backend: float64 finite differences (element-wise and directional) of h and E, the same
with spectral_norm on E, a frozen E (D during G's step), the out= addition, and equality
with torch.nn.Embedding + (emb(y) * h).sum(1, keepdim=True)."""
import numpy as np
import pytest

from cganraw import nn
from cganraw.gradcheck import check_backward, check_module
from cganraw.ops.label_projection import label_projection_backward_numpy, label_projection_forward_numpy

# (N, F, K, labels): a batch of 1; odd F with repeated labels and a missing class; all rows
# one label; more classes than rows
CASES = [(1, 1, 2, [1]), (6, 5, 4, [0, 3, 3, 1, 0, 0]), (5, 7, 3, [2, 2, 2, 2, 2]), (3, 4, 9, [8, 0, 5])]


@pytest.mark.parametrize("n, f, k, labels", CASES)
def test_layer_by_finite_differences(n, f, k, labels, rng):
    layer = nn.LabelProjection(k, f, rng=rng).to(np.float64)
    layer.weight.data[...] = rng.normal(size=(k, f))
    y = np.array(labels)
    # element-wise (every value of h and E) and directional
    check_module(layer, rng.normal(size=(n, f)), y, elementwise=True)


def test_spectrally_normalised_by_finite_differences(rng):
    # Miyato's D normalises the projection embedding too: the gradient reaches weight_orig
    layer = nn.LabelProjection(4, 6, rng=rng).to(np.float64)
    layer.weight.data[...] = rng.normal(size=(4, 6))      # sigma near 1: finite differences stay linear
    nn.utils.spectral_norm(layer, rng=np.random.default_rng(1))
    layer.eval()        # no power iteration between the finite differences' forwards
    assert [name for name, _ in layer.named_parameters()] == ["weight_orig"]
    check_module(layer, rng.normal(size=(5, 6)), np.array([0, 3, 3, 1, 0]), elementwise=True)


def test_reference_op_by_finite_differences(rng):
    # the op itself, out= included: d/dh and d/dE of sum(gy * (base + <E[y], h>))
    h, E, base = rng.normal(size=(7, 5)), rng.normal(size=(3, 5)), rng.normal(size=(7, 1))
    y = np.array([2, 0, 2, 2, 1, 0, 2])
    params = [nn.Parameter(E, name="E")]
    state = {}

    def forward(h_):
        out, state["cache"] = label_projection_forward_numpy(h_, y, params[0].data, out=base.copy())
        return out

    def backward(gy):
        dh, dE = label_projection_backward_numpy(gy, state["cache"], dE_out=params[0].grad)
        assert dE is params[0].grad
        return dh
    check_backward(forward, backward, [h], params, elementwise=True, name="label_projection")


def test_frozen_weight_still_gives_dh(rng):
    # D during G's step: E gets no gradient, h does
    layer = nn.LabelProjection(3, 4, rng=rng)
    layer.requires_grad_(False)
    h = rng.standard_normal((5, 4)).astype(np.float32)
    y = np.array([0, 2, 2, 1, 0])
    layer(h, y)
    dy = rng.standard_normal((5, 1)).astype(np.float32)
    dh = layer.backward(dy)
    np.testing.assert_array_equal(dh, dy * layer.weight.data[y])
    assert not layer.weight.grad.any()


def test_out_is_added_into_and_errors(rng):
    layer = nn.LabelProjection(3, 4, rng=rng)
    h = rng.standard_normal((2, 4)).astype(np.float32)
    y = np.array([1, 2])
    base = rng.standard_normal((2, 1)).astype(np.float32)
    o = base.copy()
    assert layer(h, y, out=o) is o
    layer._cache = None
    np.testing.assert_allclose(o, base + layer(h, y), rtol=1e-6)
    with pytest.raises(ValueError, match=r"expected h of shape \(N, 4\)"):
        layer(h[:, :3], y)
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        layer(h, y[:1])
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        layer(h, np.array([0, 3]))
    with pytest.raises(TypeError, match="dtype"):
        layer(h.astype(np.float64), y)


def test_equals_torch(rng):
    torch = pytest.importorskip("torch")
    n, f, k = 9, 13, 4
    h = rng.standard_normal((n, f))
    y = np.array([0, 3, 3, 1, 0, 0, 3, 1, 3])         # class 2 missing
    dy = rng.standard_normal((n, 1))
    layer = nn.LabelProjection(k, f, rng=rng).to(np.float64)
    out = layer(h, y)
    dh = layer.backward(dy)
    emb = torch.nn.Embedding(k, f).double()
    emb.load_state_dict({k_: torch.from_numpy(v) for k_, v in layer.state_dict().items()})
    th = torch.from_numpy(h).requires_grad_(True)
    t_out = (emb(torch.from_numpy(y)) * th).sum(1, keepdim=True)
    t_out.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dh, th.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, emb.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert not layer.weight.grad[2].any()
