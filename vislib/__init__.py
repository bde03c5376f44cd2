"""vislib: hook and gradient utilities for a hands-on course on seeing inside CNNs.

Submodules load on first use (``vislib.cam``, ``vislib.saliency``, ...), so ``import vislib``
stays fast; each module holds one idea of the course.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("activations", "adversarial", "cam", "checks", "conventions", "data", "embedding", "hooks", "metrics",
               "models", "optimize", "plot", "saliency", "style", "widgets")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"vislib.{name}")
    raise AttributeError(f"module 'vislib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
