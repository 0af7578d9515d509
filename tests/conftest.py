import logging
import os

import numpy as np
import pytest

# Tests run on the NumPy reference backend unless a test switches explicitly.
os.environ.setdefault("CGANRAW_BACKEND", "numpy")
# Kernels run under strict barriers: a barrier released while some threads of the block have
# returned is a KernelError (PTX would release it; a kernel that relies on that is one edit
# away from a hang). Strict mode only adds errors to the lenient one, so a suite that passes
# strict passes lenient too; tests/emu/test_sync_bugs.py covers both modes explicitly.
os.environ.setdefault("EMU_STRICT_BARRIERS", "1")

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
# $CGANRAW_DATA_DIR as the session started (tests clear it to isolate themselves)
ENV_DATA_DIR = os.environ.get("CGANRAW_DATA_DIR", "").strip()
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def real_mnist_dir():
    """The first folder holding the four real MNIST files (.gz or not): $CGANRAW_DATA_DIR or
    one of the subfolders cganraw.data looks in there, then ../shared/data/mnist; else None."""
    candidates = []
    if ENV_DATA_DIR:
        root = os.path.expanduser(ENV_DATA_DIR)
        candidates += [os.path.join(root, sub) for sub in ("mnist", "mnist/gzip", ".", "gzip", "MNIST/raw")]
    candidates.append(SHARED_MNIST)
    for folder in candidates:
        if all(any(os.path.isfile(os.path.join(folder, n + ext)) for ext in (".gz", "")) for n in MNIST_NAMES):
            return os.path.abspath(folder)
    return None


@pytest.fixture(autouse=True)
def _restore_cganraw_logging():
    """A CLI run in-process (main(argv)) sets up the `cganraw` logger for the process: a
    stderr handler and a level. Undo that after each test, so that one test's CLI run does
    not make library code print in the tests after it."""
    logger = logging.getLogger("cganraw")
    saved = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


@pytest.fixture
def keep_backend():
    """The backend as it was before the test, restored after it."""
    from cganraw import backend
    prev = backend.current()
    yield
    backend.use(prev)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def mnist_dir():
    """The folder of the real MNIST IDX files ($CGANRAW_DATA_DIR, else ../shared/data/mnist)."""
    path = real_mnist_dir()
    if path is None:
        pytest.skip("real MNIST found neither in $CGANRAW_DATA_DIR nor in ../shared/data/mnist")
    return path


@pytest.fixture
def letters_dir(tmp_path):
    """A synthetic EMNIST letters split in EMNIST's layout (48 training, 16 test images)."""
    from tests.synthetic import write_emnist
    d = tmp_path / "data"
    write_emnist(d, "letters", np.random.default_rng(0), n=(48, 16))
    return d
