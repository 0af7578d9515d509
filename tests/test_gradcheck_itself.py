"""The gradient checker must fail on wrong gradients, and say why."""
import numpy as np
import pytest

from cganraw import nn
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


def test_elementwise_names_the_element(rng):
    layer = ScaledWrong(4, 3, rng=rng).to(np.float64)
    layer.weight.data[...] = 1.0
    with pytest.raises(GradientCheckError) as e:
        check_module(layer, rng.normal(size=(2, 4)))
    # the directional check runs first; force the element-wise one alone too
    msg = str(e.value)
    assert "mismatch" in msg


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
