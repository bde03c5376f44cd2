"""The hints of the mutation tests: how each is asserted in both languages, and the share of typical
mistakes whose check names them, per exercise.

A wrong mutant is a ``(fn, hint)`` pair of a ``test_<exercise>_names_the_mistake`` test, which runs the
check once inside ``names_the_mistake(hint)``: the failure must carry ``hint`` in English and the Korean
translation of the message that holds it. Its hint is NAMED when the phrase the test asserts is not one
of the generic messages (where the largest difference is, NaN, a constant factor), i.e. the learner is
told what the mistake is. Run ``python -m tests.hint_coverage`` for the table."""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections import Counter
from contextlib import contextmanager

import pytest

from vislib.checks.harness import CheckFailure
from vislib.checks.language import DOMAIN, LOCALE_DIR, Message

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


@functools.cache
def korean_catalog() -> dict[str, str]:
    """The committed Korean catalog (the compiled .mo the checks read): msgid -> msgstr."""
    from babel.messages.mofile import read_mo

    with open(LOCALE_DIR / "ko" / "LC_MESSAGES" / f"{DOMAIN}.mo", "rb") as file:
        return {m.id: m.string for m in read_mo(file) if m.id}


def innermost(message: Message, hint: str) -> Message | None:
    """The innermost part of ``message`` whose English text matches ``hint`` (outermost first, so the
    first part none of whose own parts matches)."""
    for part in message.parts():
        if re.search(hint, part.render("en")) and not any(
                re.search(hint, inner.render("en")) for inner in part.parts() if inner is not part):
            return part
    return None


@contextmanager
def names_the_mistake(hint: str):
    """The block must fail a check with ``hint`` (a regular expression) in its English message, and the
    same failure, shown in Korean, must hold the Korean translation (from the catalog) of the message
    that carries the hint, every part of it translated. The check runs once; the failure is rendered
    in both languages."""
    with pytest.raises(CheckFailure) as caught:
        yield
    failure = caught.value
    english, korean = failure.render("en"), failure.render("ko")
    assert re.search(hint, english), f"{hint!r} not in the English message: {english}"
    part = innermost(failure.message, hint)
    catalog = korean_catalog()
    untranslated = [p.msgid for p in failure.message.parts() if not catalog.get(p.msgid)]
    assert not untranslated, f"not in the Korean catalog: {untranslated}"
    assert part.render("ko") in korean and re.search("[가-힣]", part.render("ko")), \
        f"the Korean message lacks the translation of {part.msgid!r}: {korean}"


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
