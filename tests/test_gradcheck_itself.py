"""The gradient checker must fail on wrong gradients, and say why."""
import numpy as np
import pytest

from cganraw import gradcheck, nn
from cganraw.gradcheck import GradientCheckError, check_backward, check_module


class ScaledWrong(nn.Linear):
    """A Linear whose weight gradient is off by 1% in one element."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad[0, 0] *= 1.01
        return dx


class DroppedTerm(nn.BatchNorm1d):
    """BatchNorm whose input gradient forgets the mean term."""

    def backward(self, dy):
        cache, _ = self._pop_cache()
        xhat, invstd, gamma, _ = cache
        self.weight.accumulate((dy * xhat).sum(0))
        self.bias.accumulate(dy.sum(0))
        return dy * gamma * invstd


def test_directional_catches_one_wrong_parameter_element(rng):
    layer = ScaledWrong(4, 3, rng=rng).to(np.float64)
    layer.weight.data[...] = 1.0
    with pytest.raises(GradientCheckError, match="directional") as e:
        check_module(layer, rng.normal(size=(2, 4)), elementwise=False)
    assert "eps=" in str(e.value) and "numeric" in str(e.value) and "analytic" in str(e.value)


class CancellingWrong(nn.Linear):
    """A Linear whose weight gradient is off by +0.01 at [0, 0] and -0.01 at [0, 1]."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad[0, 0] += 0.01
        self.weight.grad[0, 1] -= 0.01
        return dx


def test_elementwise_names_the_element(rng, monkeypatch):
    # along the all-ones direction the two errors cancel, so the directional check passes
    # and only the element-wise check, run after it by check_module, can catch and name them
    monkeypatch.setattr(gradcheck, "_floored_direction", lambda rng, shape, floor=0.1: np.ones(shape))
    layer = CancellingWrong(4, 3, rng=rng).to(np.float64)
    with pytest.raises(GradientCheckError, match="element-wise") as e:
        check_module(layer, rng.normal(size=(2, 4)))
    msg = str(e.value)
    assert "param weight (2 of 12 elements)" in msg and "at (0, 0):" in msg and "at (0, 1):" in msg


def test_elementwise_alone_names_the_element(rng):
    x = rng.normal(size=(3,))

    def backward(gy):
        g = 2 * x * gy
        g[1] *= 1.5
        return g
    with pytest.raises(GradientCheckError, match=r"at \(1,\)"):
        from cganraw.gradcheck import _check_elementwise
        xs = x.copy()
        _check_elementwise("square", [("input 0", xs, backward(np.ones(3)))], [x.copy()],
                           lambda: float((xs ** 2).sum()), np, 1e-4, 1e-6, 1e-5)


def test_missing_backward_term_is_caught(rng):
    layer = DroppedTerm(3).to(np.float64)
    with pytest.raises(GradientCheckError):
        check_module(layer, rng.normal(size=(5, 3)))


def test_correct_function_passes(rng):
    x = rng.normal(size=(4, 3))
    check_backward(lambda a: np.sin(a) * a, lambda gy: gy * (np.cos(x) * x + np.sin(x)), [x])


def test_wrong_gradient_count_is_reported(rng):
    with pytest.raises(GradientCheckError, match="gradients"):
        check_backward(lambda a, b: a + b, lambda gy: gy, [rng.normal(size=3), rng.normal(size=3)])
