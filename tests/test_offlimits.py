"""The off-limits rule in the learner's own kernel: every route to vislib's implementation of the
exercise, or to a peer library, is refused with the same message."""

from __future__ import annotations

import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

import vislib.saliency as vs
from vislib import checks
from vislib.checks import offlimits

REFUSED = "calls vislib's own implementation or a library that implements the exercise"


def private_helper(model, x, target):
    return vs._input_gradient(model, x, target).abs().amax(1)


def in_a_thread(model, x, target):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(vs.gradient, model, x, target).result().abs().amax(1)


def profiler_off(model, x, target):
    sys.setprofile(None)
    threading.setprofile(None)
    return vs.gradient(model, x, target).abs().amax(1)


COPIED = types.FunctionType(vs.gradient.__wrapped__.__code__, vs.gradient.__wrapped__.__globals__, "copied")


def copied_code(model, x, target):
    return COPIED(model, x, target).abs().amax(1)


def swallowed(model, x, target):
    try:
        return vs.gradient(model, x, target).abs().amax(1)
    except Exception:
        return x.abs().amax(1)


def peer_library(model, x, target):
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=target, abs=True).amax(1)


@pytest.mark.parametrize("route", [private_helper, in_a_thread, profiler_off, copied_code, swallowed, peer_library])
def test_every_route_to_the_implementation_is_refused(route):
    with pytest.raises(AssertionError, match=REFUSED):
        checks.saliency_map(route)
    assert sys.getprofile() is None and vs.gradient.__wrapped__.__code__.co_filename.endswith("saliency.py")


def test_the_rule_covers_private_helpers_and_keeps_the_handed_out_ones():
    from vislib.checks.style import OFF_LIMITS

    targets = {f.__name__ for f in OFF_LIMITS.targets()}
    assert {"gram_matrix", "_relative_error", "total_variation"} <= targets
    assert not {"extract", "vgg19_features"} & targets


def test_tripwires_are_undone_also_when_the_call_raises():
    from vislib.checks.saliency import OFF_LIMITS

    originals = {f: f.__code__ for f in OFF_LIMITS.targets()}
    with pytest.raises(OSError), offlimits.tripwires(OFF_LIMITS):
        raise OSError("the learner's error")
    assert all(f.__code__ is code for f, code in originals.items())
