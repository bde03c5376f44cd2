import pytest
import torch

from vislib.data import make_shapes
from vislib.models import shapes_net


@pytest.fixture(scope="session")
def shapes_model():
    """The trained ShapesNet (eval mode). Tests must not change it; helpers.untouched checks."""
    return shapes_net()


@pytest.fixture(scope="session")
def held_out():
    """64 held-out shapes (a seed the training never used)."""
    return make_shapes(64, seed=12345)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
