import os

import pytest

from cganraw import cuda_emu

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ORDERS = ("forward", "reverse", "random")


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


@pytest.fixture(scope="session")
def basic():
    return cuda_emu.RawModule(path=fixture_path("basic.cu"))


@pytest.fixture(scope="session")
def reduce():
    return cuda_emu.RawModule(path=fixture_path("reduce.cu"))


@pytest.fixture(scope="session")
def divergent():
    return cuda_emu.RawModule(path=fixture_path("divergent.cu"))


@pytest.fixture(params=ORDERS)
def order(request):
    """Runs a test once per thread order."""
    with cuda_emu.order(request.param, seed=7):
        yield request.param
