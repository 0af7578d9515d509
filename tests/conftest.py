import os

import numpy as np
import pytest

# Tests run on the NumPy reference backend unless a test switches explicitly.
os.environ.setdefault("CGANRAW_BACKEND", "numpy")

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def mnist_dir():
    """The real MNIST IDX files in ../shared/data/mnist, when present."""
    path = os.path.abspath(SHARED_MNIST)
    if not os.path.isdir(path):
        pytest.skip("real MNIST not present in ../shared/data/mnist")
    return path
