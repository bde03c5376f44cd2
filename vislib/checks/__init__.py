"""Instant feedback on the assignments: ``checks.<exercise>(fn)`` runs the learner's ``fn`` on
several small random-weight models and inputs, compares it with vislib's reference, and prints one
success line or raises ``AssertionError`` whose message names the likely mistake. A function that
still raises ``NotImplementedError`` gets "not implemented yet" (``strict=True``, as the autograder
calls it, makes that an error too).

The messages follow the learner's locale (``LANG=ko_KR.UTF-8``: Korean) or ``use_language("ko")`` /
``use_language("en")`` (see ``vislib.checks.language``).

One module per assignment; each lists its checks in ``__all__``."""

from vislib.checks.activations import *  # noqa: F403
from vislib.checks.activations import __all__ as _activations
from vislib.checks.cam import *  # noqa: F403
from vislib.checks.cam import __all__ as _cam
from vislib.checks.embeddings import *  # noqa: F403
from vislib.checks.embeddings import __all__ as _embeddings
from vislib.checks.harness import NotImplementedYet, unless_unimplemented
from vislib.checks.language import use_language
from vislib.checks.optimisation import *  # noqa: F403
from vislib.checks.optimisation import __all__ as _optimisation
from vislib.checks.saliency import *  # noqa: F403
from vislib.checks.saliency import __all__ as _saliency
from vislib.checks.style import *  # noqa: F403
from vislib.checks.style import __all__ as _style

__all__ = ["NotImplementedYet", "unless_unimplemented", "use_language",
           *_activations, *_cam, *_embeddings, *_optimisation, *_saliency, *_style]
