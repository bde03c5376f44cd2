"""The assignments' hand-out -> submit -> grade loop, run as an instructor runs it, offline: `make
autograde` (nbgrader with a local sqlite gradebook; it generates the learners' versions first, as `make
assignments` does) on a copy of the course folder, with two submissions per assignment: the solutions,
and the untouched learner's version."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "assignments"
NAMES = sorted(p.name for p in (COURSE / "source").iterdir() if p.is_dir())


def make(target: str, course: Path) -> None:
    done = subprocess.run(["make", "-s", target, f"COURSE={course}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def text(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in cells(path))


def outputs(cell: dict) -> str:
    return "".join("".join(o.get("text", "")) + o.get("ename", "") + o.get("evalue", "") for o in cell["outputs"])


def grade_id(cell: dict) -> str | None:
    return cell["metadata"].get("nbgrader", {}).get("grade_id")


def is_test_cell(cell: dict) -> bool:
    meta = cell["metadata"].get("nbgrader", {})
    return cell["cell_type"] == "code" and meta.get("grade") and not meta.get("solution")


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    """A copy of the course folder, `make autograde` on two submissions per assignment: the solutions,
    and the untouched learners' version (the committed one, which a test below compares with a fresh
    generation); then the instructor awards the written answers of the solutions full points (as in
    formgrader) and exports again. `make autograde` generates the learners' versions first, so the copy's
    release/ is a fresh generation."""
    course = tmp_path_factory.mktemp("course")
    shutil.copy(COURSE / "nbgrader_config.py", course)
    shutil.copytree(COURSE / "source", course / "source")
    for name in NAMES:
        for student, folder in (("solutions", COURSE / "source"), ("untouched", COURSE / "release")):
            (course / "submitted" / student / name).mkdir(parents=True)
            shutil.copy(folder / name / f"{name}.ipynb", course / "submitted" / student / name)
    make("autograde", course)
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for name in NAMES:
            notebook = gradebook.find_submission_notebook(name, name, "solutions")
            for grade in notebook.grades:
                if grade.needs_manual_grade:
                    grade.manual_score = grade.max_score
        gradebook.db.commit()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "nbgrader"), "export", "--log-level=WARN"], cwd=course,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return course


def test_there_is_an_assignment_per_part_of_the_lecture():
    assert set(NAMES) == {"activations", "embeddings", "saliency", "cam", "optimisation", "style"}
    for name in NAMES:
        assert (COURSE / "source" / name / f"{name}.ipynb").is_file()


def test_the_committed_learners_versions_equal_a_fresh_generation(graded):
    for name in NAMES:
        committed = COURSE / "release" / name / f"{name}.ipynb"
        assert committed.is_file(), f"run `make assignments` and commit assignments/release/{name}"
        assert json.loads(committed.read_text()) == json.loads((graded / "release" / name / f"{name}.ipynb")
                                                               .read_text()), \
            f"assignments/release/{name} is stale: run `make assignments` and commit it"


def hidden_lines(source: str) -> set[str]:
    """The lines that learners must not see: those of solutions and hidden tests that are long
    enough to be telling and that the source does not also show outside them."""
    hidden, shown, inside = set(), set(), False
    for line in source.splitlines():
        marker = line.strip()
        if re.fullmatch(r"### BEGIN (SOLUTION|HIDDEN TESTS)", marker):
            inside = True
        elif re.fullmatch(r"### END (SOLUTION|HIDDEN TESTS)", marker):
            inside = False
        elif len(marker) >= 12:
            (hidden if inside else shown).add(marker)
    return {line for line in hidden if not any(line in visible for visible in shown)}


def test_the_learners_versions_hold_none_of_the_solution_lines(graded):
    for name in NAMES:
        source = text(COURSE / "source" / name / f"{name}.ipynb")
        released = text(graded / "release" / name / f"{name}.ipynb")
        visible = set(released.splitlines())
        leaked = {line for line in hidden_lines(source) if any(line in v for v in visible)}
        assert hidden_lines(source), f"{name} has no solutions"
        assert not leaked, f"{name}'s release shows solution lines: {sorted(leaked)[:3]}"
        assert "BEGIN SOLUTION" not in released and "BEGIN HIDDEN TESTS" not in released
        assert "raise NotImplementedError()" in released and "YOUR ANSWER HERE" in released


def test_no_facilitator_material_reaches_the_learners(graded):
    released = {p.name for p in (graded / "release").rglob("*") if p.is_file()}
    assert not any("FACILITATOR" in name.upper() for name in released)


def read_grades(course: Path) -> dict:
    with open(course / "grades.csv") as f:
        return {(row["assignment"], row["student_id"]): (float(row["score"]), float(row["max_score"]))
                for row in csv.DictReader(f)}


def test_autograde_gives_full_marks_to_the_solutions_and_zero_to_the_untouched_release(graded):
    grades = read_grades(graded)
    for name in NAMES:
        score, maximum = grades[(name, "solutions")]
        assert maximum > 0 and score == maximum, f"{name}: the solutions got {score} of {maximum}"
        assert grades[(name, "untouched")] == (0.0, maximum), f"{name}: the untouched release scored"
    for name in NAMES:
        for student in ("solutions", "untouched"):
            assert (graded / "feedback" / student / name / f"{name}.html").is_file()


def test_the_solutions_run_top_to_bottom_without_an_error(graded):
    for name in NAMES:
        executed = cells(graded / "autograded" / "solutions" / name / f"{name}.ipynb")
        errors = [grade_id(c) or i for i, c in enumerate(executed) if c["cell_type"] == "code"
                  and any(o["output_type"] == "error" for o in c["outputs"])]
        assert not errors, f"{name}: cells {errors} raised with the solutions in place"
        checked = [outputs(c) for c in executed if is_test_cell(c)]
        assert checked and all(": correct." in out for out in checked)


def test_the_untouched_release_reports_not_implemented_yet_for_every_check(graded):
    for name in NAMES:
        executed = cells(graded / "autograded" / "untouched" / name / f"{name}.ipynb")
        for i, cell in enumerate(executed):
            if is_test_cell(cell):
                assert "not implemented yet" in outputs(cell), f"{name}: check {grade_id(cell)}"
            elif cell["cell_type"] == "code":  # only the hidden strict checks may fail
                assert not any(o["output_type"] == "error" for o in cell["outputs"]), \
                    f"{name}: cell {grade_id(cell) or i} raised in the learners' version"
