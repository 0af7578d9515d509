"""Module protocol: names, order, state dicts, modes, errors, and the PyTorch mapping."""
import numpy as np
import pytest

from cganraw import nn


def small_net(rng=0):
    return nn.Sequential(nn.Conv2d(2, 4, 3, 2, 1, rng=rng), nn.BatchNorm2d(4, rng=rng), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.Dropout(0.3, rng=1), nn.Linear(4 * 4 * 4, 1, rng=rng))


def test_named_parameters_are_dotted_and_ordered():
    names = [n for n, _ in small_net().named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias"]
    keys = list(small_net().state_dict())
    assert keys == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                    "1.num_batches_tracked", "5.weight", "5.bias"]


def test_seeded_init_is_reproducible_and_dcgan_scaled():
    a, b = small_net(rng=np.random.default_rng(3)), small_net(rng=np.random.default_rng(3))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    big = nn.Linear(400, 500, rng=np.random.default_rng(0))
    assert abs(big.weight.data.std() - 0.02) < 1e-3 and abs(big.weight.data.mean()) < 1e-3
    assert np.all(big.bias.data == 0)
    bn = nn.BatchNorm1d(10000, rng=np.random.default_rng(0))
    assert abs(bn.weight.data.mean() - 1) < 1e-3 and abs(bn.weight.data.std() - 0.02) < 1e-3


def test_state_dict_roundtrip_and_copy_semantics(rng):
    a, b = small_net(rng=np.random.default_rng(1)), small_net(rng=np.random.default_rng(2))
    sd = a.state_dict()
    sd["0.weight"][...] = 0  # a copy: mutating it leaves the module alone
    assert np.abs(a[0].weight.data).sum() > 0
    b.load_state_dict(a.state_dict())
    x = rng.normal(size=(3, 2, 7, 7)).astype(np.float32)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))


def test_load_state_dict_rejects_bad_state_without_writing():
    net = small_net()
    before = net.state_dict()
    bad = dict(before)
    bad["5.weight"] = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match=r"5.weight.*\(2, 64\).*\(1, 64\)"):
        net.load_state_dict(bad)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    missing = dict(before)
    del missing["0.bias"]
    with pytest.raises(KeyError, match="0.bias"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match="extra"):
        net.load_state_dict({**before, "extra": np.zeros(1)})


def test_train_eval_propagate():
    net = small_net()
    net.eval()
    assert not any(m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_backward_accumulates_and_zero_grad_clears(rng):
    lin = nn.Linear(3, 2, rng=rng)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    dy = np.ones((4, 2), np.float32)
    lin(x)
    lin.backward(dy)
    g1 = lin.weight.grad.copy()
    lin(x)
    lin.backward(dy)
    np.testing.assert_allclose(lin.weight.grad, 2 * g1, rtol=1e-6)
    lin.zero_grad()
    assert not lin.weight.grad.any()


def test_frozen_parameters_skip_grad_but_pass_input_gradient(rng):
    lin = nn.Linear(3, 2, rng=rng).requires_grad_(False)
    lin(rng.normal(size=(4, 3)).astype(np.float32))
    dx = lin.backward(np.ones((4, 2), np.float32))
    assert dx.shape == (4, 3) and not lin.weight.grad.any()


@pytest.mark.parametrize("layer,x", [
    (nn.Linear(3, 2), np.zeros((2, 3), np.float32)),
    (nn.Conv2d(1, 2, 3), np.zeros((1, 1, 5, 5), np.float32)),
    (nn.BatchNorm1d(3), np.ones((4, 3), np.float32)),
    (nn.Tanh(), np.zeros(3, np.float32)),
    (nn.Reshape(3), np.zeros((2, 3), np.float32)),
])
def test_backward_without_forward_is_a_clear_error(layer, x):
    with pytest.raises(RuntimeError, match="backward called without a forward"):
        layer.backward(np.zeros(1, np.float32))
    y = layer(x)
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.ones_like(y))


def test_bad_inputs_name_layer_and_shapes():
    with pytest.raises(ValueError, match=r"Conv2d: expected input of shape \(N, 3, H, W\), got shape \(2, 4, 8, 8\)"):
        nn.Conv2d(3, 2, 3)(np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: expected input of shape \(N, 3, H, W\), got shape \(3, 8, 8\)"):
        nn.Conv2d(3, 2, 3)(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="Linear: expected a floating-point array"):
        nn.Linear(3, 2)(np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="Linear: input dtype float64 differs"):
        nn.Linear(3, 2)(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match=r"Linear: expected input of shape \(N, 3\), got shape \(2, 4\)"):
        nn.Linear(3, 2)(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"Embedding: labels must lie in \[0, 10\)"):
        nn.Embedding(10, 4)(np.array([3, 10]))
    with pytest.raises(ValueError, match="Embedding: labels must lie"):
        nn.Embedding(10, 4)(np.array([-1]))
    with pytest.raises(TypeError, match="Embedding: expected integer labels"):
        nn.Embedding(10, 4)(np.array([1.0]))
    with pytest.raises(ValueError, match="BatchNorm1d: training needs more than one value"):
        nn.BatchNorm1d(3)(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="Conv2d: input of spatial size 2x2 is smaller"):
        nn.Conv2d(1, 1, 5)(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="Reshape: cannot reshape"):
        nn.Reshape(5)(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="Concat: input 1"):
        nn.Concat()(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 5, 4)))
    with pytest.raises(ValueError, match="Linear.backward: gradient has shape"):
        lin = nn.Linear(3, 2)
        lin(np.zeros((2, 3), np.float32))
        lin.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="Dropout: p must be"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm1d(4, 0.8, 1.5)


def test_batchnorm_running_statistics_match_pytorch_rule(rng):
    bn = nn.BatchNorm2d(3)
    rm, rv = np.zeros(3), np.ones(3)
    for _ in range(4):
        x = (rng.normal(size=(5, 3, 4, 4)) * 3 + 2).astype(np.float32)
        bn(x)
        bn.backward(np.zeros_like(x))
        m = x.mean(axis=(0, 2, 3))
        v = x.var(axis=(0, 2, 3), ddof=1)  # unbiased, as PyTorch's running_var
        rm, rv = 0.9 * rm + 0.1 * m, 0.9 * rv + 0.1 * v
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 4
    bn.eval()
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    want = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5) * \
        bn.weight.data[None, :, None, None] + bn.bias.data[None, :, None, None]
    np.testing.assert_allclose(bn(x), want, rtol=1e-5, atol=1e-5)


def test_dropout_is_inverted_and_seeded():
    x = np.ones((200, 50), np.float32)
    a, b = nn.Dropout(0.25, rng=5), nn.Dropout(0.25, rng=5)
    ya, yb = a(x), b(x)
    np.testing.assert_array_equal(ya, yb)
    assert set(np.unique(ya)) == {0.0, np.float32(1 / 0.75)}
    assert abs((ya == 0).mean() - 0.25) < 0.02
    a.eval()
    assert a(x) is x


# ---- PyTorch mapping (skipped cleanly without torch) ------------------------------------

def test_state_dict_maps_onto_torch(rng):
    torch = pytest.importorskip("torch")
    tn = torch.nn
    ours = nn.Sequential(nn.Linear(5, 12, rng=rng), nn.BatchNorm1d(12), nn.LeakyReLU(0.2),
                         nn.Reshape(3, 2, 2), nn.ConvTranspose2d(3, 4, 4, 2, 1, rng=rng), nn.ReLU(),
                         nn.Conv2d(4, 2, 3, 2, 1, rng=rng), nn.Tanh())
    theirs = tn.Sequential(tn.Linear(5, 12), tn.BatchNorm1d(12), tn.LeakyReLU(0.2), tn.Unflatten(1, (3, 2, 2)),
                           tn.ConvTranspose2d(3, 4, 4, 2, 1), tn.ReLU(), tn.Conv2d(4, 2, 3, 2, 1), tn.Tanh())
    sd = ours.state_dict()
    assert list(sd) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y_ours = ours(x)
    xt = torch.from_numpy(x).requires_grad_(True)
    y_theirs = theirs(xt)
    np.testing.assert_allclose(y_ours, y_theirs.detach().numpy(), rtol=1e-4, atol=1e-5)
    # and the gradients agree too
    dy = rng.normal(size=y_ours.shape).astype(np.float32)
    ours.zero_grad()
    ours.backward(dy)
    theirs.zero_grad()
    y_theirs.backward(torch.from_numpy(dy))
    for (name, p), (tname, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == tname
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    theirs.eval(), ours.eval()
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_sequential_backward_without_the_input_gradient(rng):
    # need_dx=False: the parameter-free steps before the first trainable one are skipped (their
    # caches dropped), that one's input GEMM too; the weight gradients are those of a full backward
    x = rng.standard_normal((5, 2, 3, 4)).astype(np.float32)
    dy = rng.standard_normal((5, 6)).astype(np.float32)
    grads = []
    for need_dx in (True, False):
        net = nn.Sequential(nn.Flatten(), nn.LeakyReLU(0.1), nn.Linear(24, 7, rng=np.random.default_rng(1)),
                            nn.LeakyReLU(0.2), nn.Linear(7, 6, rng=np.random.default_rng(2)))
        net(x)
        dx = net.backward(dy, need_dx=need_dx)
        assert (dx is None) != need_dx
        grads.append([p.grad.copy() for p in net.parameters()])
        assert all(m._cache is None for _, m in net.named_modules())
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    net.requires_grad_(False)                   # nothing trainable: nothing runs, nothing is left
    net(x)
    assert net.backward(dy, need_dx=False) is None
    assert all(m._cache is None for _, m in net.named_modules())
