import copy
import os

import pytest
import torch
import torch.nn as nn

from vislib.data import make_shapes
from vislib.models import shapes_net, torchvision_model

# The tests read the checks' English messages (tests/test_checks_language.py reads both languages): a Korean
# locale on the machine (LANG=ko_KR.UTF-8) must not change them, here or in the kernels and graders the tests
# start, which inherit this environment. LANGUAGE comes first among the locale's variables.
os.environ["LANGUAGE"] = "en"


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


@pytest.fixture(scope="module")
def resnet18():
    return torchvision_model("resnet18", pretrained=False, seed=0)


@pytest.fixture(scope="module")
def vgg11():
    return torchvision_model("vgg11", pretrained=False, seed=0)


def without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy whose ReLUs are not inplace: the reference libraries read activations that an
    inplace ReLU would overwrite. vislib itself always runs on the inplace original."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return reference


@pytest.fixture(scope="module")
def references():
    """The models' copies without inplace ReLU, made once per model and module (VGG-11 is 0.5 GB)."""
    return {}


INPUT_SIZE = {"resnet18": 64, "vgg11": 32}  # VGG-11 on 32 px (last block 2x2): its convolutions dominate the time


@pytest.fixture
def case(request, held_out, references):
    """A parametrised comparison case (model fixture name, layer, targets) -> (model, its copy
    without inplace ReLU, layer, input batch, targets): ShapesNet on held-out shapes, the
    torchvision models on seeded noise images."""
    model_name, layer, targets = request.param
    model = request.getfixturevalue(model_name)
    if model_name not in references:
        references[model_name] = without_inplace(model)
    if model_name == "shapes_model":
        x = held_out.images[: len(targets)]
    else:
        size = INPUT_SIZE[model_name]
        x = torch.randn(len(targets), 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, references[model_name], layer, x, torch.tensor(targets)
