"""Every exercise names (almost) every typical mistake its mutation tests try."""

from vislib import checks

from .hint_coverage import named, shares


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
