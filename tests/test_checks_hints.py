"""Every exercise names (almost) every typical mistake its mutation tests try, in English and in Korean."""

import importlib
import inspect

from vislib import checks

from .hint_coverage import ASSIGNMENTS, GENERIC, korean_catalog, named, shares


def test_every_exercise_has_wrong_mutants_and_names_at_least_90_percent_of_them():
    table = shares()
    exercises = {name for name in checks.__all__ if hasattr(getattr(checks, name), "exercise")}
    assert set(table) == exercises
    low = {exercise: f"{good}/{count}" for exercise, (count, good) in table.items() if good < 0.9 * count}
    assert not low, f"exercises whose mutants mostly get a generic message: {low}"


def test_generic_messages_are_not_named():
    assert not named("the largest difference is at index")
    assert not named("returns NaN or infinite values")
    assert named("not by the mean activation")


def test_the_generic_phrases_are_the_checks_own_generic_messages():
    """GENERIC is English: each phrase is in a message of the checks (which has its Korean translation)."""
    for phrase in GENERIC:
        assert any(phrase in msgid and text for msgid, text in korean_catalog().items()), phrase


def test_every_mutation_test_asserts_its_hint_in_both_languages():
    for assignment in ASSIGNMENTS:
        module = importlib.import_module(f"tests.test_checks_{assignment}")
        tests = [test for name, test in vars(module).items() if name.endswith("_names_the_mistake")]
        assert tests and all("with names_the_mistake(hint):" in inspect.getsource(test) for test in tests), assignment
