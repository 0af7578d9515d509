"""BCE-with-logits and Adam."""
import numpy as np
import pytest

from cganraw import nn
from cganraw.gradcheck import check_backward
from cganraw.losses import bce_with_logits, mode_seeking
from cganraw.optim import Adam


def bce_naive(x, t):
    s = 1 / (1 + np.exp(-x))
    return -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean()


def test_bce_matches_definition_and_gradient(rng):
    x = rng.normal(size=(7, 1)) * 3
    t = rng.uniform(size=(7, 1))  # soft targets
    loss, dx = bce_with_logits(x, t)
    assert abs(loss - bce_naive(x, t)) < 1e-12
    check_backward(lambda a: np.asarray(bce_with_logits(a, t)[0]), lambda gy: gy * bce_with_logits(x, t)[1], [x])


def test_bce_is_finite_at_extreme_logits():
    x = np.array([[1e4], [-1e4], [0.0]], np.float32)
    for t in (0.0, 1.0, 0.9):
        loss, dx = bce_with_logits(x, t)
        assert np.isfinite(loss) and np.all(np.isfinite(dx))
    loss, _ = bce_with_logits(np.array([1e4, -1e4], np.float32), np.array([1.0, 0.0], np.float32))
    assert loss == 0.0
    loss, _ = bce_with_logits(np.array([-1e4], np.float32), 1.0)
    assert abs(loss - 1e4) < 1


def test_bce_rejects_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        bce_with_logits(np.array([1, 2]), 1.0)
    with pytest.raises(ValueError, match="do not match"):
        bce_with_logits(np.zeros((3, 1)), np.zeros(4))


def test_mode_seeking_by_hand_and_by_finite_differences(rng):
    # two pairs: images differ by mean 0.5, noise by mean 2 -> ratio 0.25, loss 1 / (0.25 + eps)
    x = np.array([[0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [1.0, 2.0]])
    z = np.array([[0.0], [0.0], [2.0], [-2.0]])
    loss, dx = mode_seeking(x, z, eps=1e-3)
    assert loss == pytest.approx(1 / (0.25 + 1e-3))
    # d/dx_a = -loss^2 sign(x_a - x_b) / (z_dist * 4 elements); x_b gets the negative
    unit = loss ** 2 / (2.0 * 4)
    np.testing.assert_allclose(dx, [[unit, -unit], [0, unit], [-unit, unit], [0, -unit]], rtol=1e-12)
    # random pairs, away from the kink of |.| at equal pixels
    x = rng.normal(size=(6, 1, 3, 2))
    z = rng.normal(size=(6, 4))
    check_backward(lambda a: np.asarray(mode_seeking(a, z)[0]), lambda gy: gy * mode_seeking(x, z)[1], [x],
                   name="mode_seeking")


def test_mode_seeking_rejects_bad_input():
    with pytest.raises(ValueError, match="even batch"):
        mode_seeking(np.zeros((3, 4)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="noise row"):
        mode_seeking(np.zeros((4, 4)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="floating-point"):
        mode_seeking(np.zeros((4, 4), np.uint8), np.ones((4, 2)))


def test_adam_first_three_updates_by_hand():
    # one scalar parameter, gradients 1, -2, 3: m, v and the update written out
    p = nn.Parameter(np.array([1.0]))
    opt = Adam([p], lr=0.1, betas=(0.5, 0.999), eps=1e-8)
    m = v = 0.0
    x = 1.0
    for t, g in enumerate([1.0, -2.0, 3.0], start=1):
        p.grad[...] = g
        opt.step()
        m = 0.5 * m + 0.5 * g
        v = 0.999 * v + 0.001 * g * g
        x -= 0.1 * (m / (1 - 0.5 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        assert abs(p.data[0] - x) < 1e-12
    # t=1 is a step of exactly lr against the gradient's sign
    q = nn.Parameter(np.array([0.0]))
    o = Adam([q], lr=0.01)
    q.grad[...] = 123.0
    o.step()
    assert abs(q.data[0] + 0.01) < 1e-9


def test_adam_state_roundtrip_resumes_exactly(rng):
    def run(split):
        lin = nn.Linear(4, 3, rng=np.random.default_rng(0))
        opt = Adam(lin.parameters(), lr=1e-2)
        xs = np.random.default_rng(1).normal(size=(10, 5, 4)).astype(np.float32)
        for i, x in enumerate(xs):
            if i == split:
                state, sd = opt.state_dict(), lin.state_dict()
                lin = nn.Linear(4, 3, rng=np.random.default_rng(9))
                lin.load_state_dict(sd)
                opt = Adam(lin.parameters(), lr=1e-2)
                opt.load_state_dict(state)
            opt.zero_grad()
            y = lin(x)
            lin.backward(2 * y)
            opt.step()
        return lin.state_dict()
    a, b = run(split=-1), run(split=5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_adam_rejects_bad_state_and_args():
    p = nn.Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="lr"):
        Adam([p], lr=-1)
    with pytest.raises(ValueError, match="empty"):
        Adam([])
    opt = Adam([p])
    with pytest.raises(ValueError, match=r"m.0 has shape \(4,\)"):
        opt.load_state_dict({"t": 3, "m.0": np.zeros(4), "v.0": np.zeros(4)})
    with pytest.raises(KeyError, match="v.0"):
        opt.load_state_dict({"t": 3, "m.0": np.zeros(3)})


def test_adam_matches_torch_over_20_steps(rng):
    torch = pytest.importorskip("torch")
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = rng.normal(size=(20, 5, 3)).astype(np.float32)
    p = nn.Parameter(w0.copy())
    opt = Adam([p], lr=2e-3, betas=(0.5, 0.999), eps=1e-8)
    tp = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = torch.optim.Adam([tp], lr=2e-3, betas=(0.5, 0.999), eps=1e-8)
    for g in grads:
        p.grad[...] = g
        opt.step()
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
