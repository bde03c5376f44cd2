"""The share of typical mistakes whose check names them, per exercise, from the mutation tests.

A wrong mutant is a ``(fn, hint)`` pair of a ``test_<exercise>_names_the_mistake`` test; its hint is
NAMED when the phrase the test asserts is not one of the generic messages (where the largest
difference is, NaN, a constant factor), i.e. the learner is told what the mistake is.
Run ``python -m tests.hint_coverage`` for the table."""

from __future__ import annotations

import importlib
import inspect
import re
from collections import Counter

ASSIGNMENTS = ("activations", "cam", "embeddings", "optimisation", "saliency", "style")
GENERIC = ("largest difference", "NaN or infinite", "times the expected one")


def wrong_mutants() -> list[tuple[str, str, str]]:
    """(exercise, mutant's name, asserted hint) for every wrong mutant of every assignment."""
    found = []
    for assignment in ASSIGNMENTS:
        module = importlib.import_module(f"tests.test_checks_{assignment}")
        for name, test in vars(module).items():
            if not (name.startswith("test_") and name.endswith("_names_the_mistake")):
                continue
            exercise = re.search(r"checks\.(\w+)\(", inspect.getsource(test)).group(1)
            for mark in getattr(test, "pytestmark", []):
                if mark.name == "parametrize" and mark.args[0] == "fn,hint":
                    found += [(exercise, getattr(fn, "__name__", "?"), hint) for fn, hint in mark.args[1]]
    return found


def named(hint: str) -> bool:
    return not any(phrase.lower() in hint.lower() for phrase in GENERIC)


def shares() -> dict[str, tuple[int, int]]:
    """Exercise -> (wrong mutants, of which named)."""
    total, good = Counter(), Counter()
    for exercise, _, hint in wrong_mutants():
        total[exercise] += 1
        good[exercise] += named(hint)
    return {exercise: (total[exercise], good[exercise]) for exercise in sorted(total)}


if __name__ == "__main__":
    print(f"| {'exercise':24} | wrong mutants | named | share |\n|---|---|---|---|")
    for exercise, (count, good) in shares().items():
        print(f"| {exercise:24} | {count:13} | {good:5} | {good / count:5.0%} |")
