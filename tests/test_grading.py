"""The grader of a real class: a class of saliency submissions (tests/grading_course.py) graded by
one `make autograde`, and the pieces it rests on: what crosses from the runner, what a confined
process may do, what the integrity scan flags, and the test cells' form."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests import grading_course
from vislib.grading import integrity, wire
from vislib.grading.autograde import checks_in

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    """`make autograde` on the smaller class, with the course's own time limits."""
    course = tmp_path_factory.mktemp("class")
    grading_course.build(course, grading_course.IN_MAKE_TEST)
    done = subprocess.run(["make", "-s", "autograde", f"COURSE={course}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make autograde failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (course / "make-output.txt").write_text(done.stdout)
    return course


def scores(course: Path) -> dict[str, float]:
    with (course / "grades.csv").open() as f:
        return {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}


def report_rows(course: Path) -> dict[str, list[dict]]:
    rows = defaultdict(list)
    path = course / "integrity.csv"
    if path.exists():
        with path.open() as f:
            for row in csv.DictReader(f):
                rows[row["student"]].append(row)
    return rows


def test_every_submission_gets_its_score_and_its_feedback(graded):
    got = scores(graded)
    for name in grading_course.IN_MAKE_TEST:
        expected = grading_course.submission(name)[2]
        assert got[name] == expected, f"{name} scored {got[name]}, not {expected}"
        assert (graded / "feedback" / name / "saliency" / "saliency.html").is_file(), f"no feedback for {name}"


def test_the_report_lists_what_the_instructor_must_see_and_nothing_for_honest_work(graded):
    rows = report_rows(graded)
    for name in grading_course.IN_MAKE_TEST:
        kinds = {row["kind"] for row in rows[name]}
        wanted = grading_course.submission(name)[3]
        assert wanted <= kinds, f"{name}: the report has {kinds}, not {wanted}: {rows[name]}"
        if wanted <= {"restored"}:  # honest work
            assert "tampering" not in kinds and "failure" not in kinds, f"{name} was flagged: {rows[name]}"
    restored = {row["cell"] for row in rows["warns_and_deletes_cells"] if row["kind"] == "restored"}
    assert restored == {"check_relu_backward", "check_occlusion_map"}
    assert "warns_and_deletes_cells" in (graded / "make-output.txt").read_text()  # make autograde prints the report


def test_a_failed_check_shows_its_hint_and_a_passed_one_its_line_in_the_feedback(graded):
    cells = json.loads((graded / "autograded" / "partial_with_syntax_error" / "saliency" / "saliency.ipynb")
                       .read_text())["cells"]
    shown = {c["metadata"].get("nbgrader", {}).get("grade_id"): json.dumps(c.get("outputs", [])) for c in cells}
    assert "relu_backward: correct." in shown["check_relu_backward"]
    assert "not implemented yet" in shown["check_occlusion_map"]
    cells = json.loads((graded / "autograded" / "warns_and_deletes_cells" / "saliency" / "saliency.ipynb")
                       .read_text())["cells"]
    check = next(c for c in cells if c["metadata"].get("nbgrader", {}).get("grade_id") == "check_saliency_map")
    assert not any(o.get("name") == "stderr" for o in check["outputs"])


def test_the_grader_leaves_no_process_behind(graded):
    """No kernel, runner or zygote outlives its grader (an orphan's parent is init); graders that
    other tests run at the same time have their parents."""
    listing = subprocess.run(["ps", "-eo", "ppid=,args="], capture_output=True, text=True).stdout.splitlines()
    orphans = [line for line in listing if "vislib.grading" in line and line.split()[0] == "1"]
    assert not orphans, f"grader processes left behind: {orphans}"


# --------------------------------------------------------------------------- the pieces


def test_replies_load_as_plain_data_only():
    plain = wire.portable({"map": torch.ones(2, requires_grad=True) * 2, "steps": 3, "pair": (1.5, "x")})
    back = wire.restore(plain)
    assert back["steps"] == 3 and back["pair"] == (1.5, "x") and back["map"].requires_grad
    assert torch.equal(back["map"].detach(), torch.full((2,), 2.0))
    assert type(wire.restore(wire.portable(object()))).__name__ == "object"
    with pytest.raises(TypeError):
        wire.restore({"__tensor__": "not a tensor", "requires_grad": False})


def run_confined(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python confined to read Python's installation and write ``tmp_path``."""
    program = textwrap.dedent(f"""
        from vislib.grading import confine
        rules = confine.Rules(readable=confine.python_roots() + confine.SYSTEM_ROOTS, writable=({str(tmp_path)!r},),
                              hidden=(confine.package_folder("vislib"),))
        confine.confine(rules)
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path)


@pytest.mark.parametrize("code", [
    "open(__import__('vislib').__file__).read()",  # vislib's source
    f"open({str(ROOT / 'assignments' / 'source' / 'saliency' / 'saliency.ipynb')!r}).read()",  # the solutions
    "import subprocess; subprocess.run(['true'])",
    "import os; os.system('true')",
    "import os; os.fork()",
    "import captum",
    "import ctypes; ctypes.CDLL(None).system(b'true')",
    "compile('x = 1', __import__('os').__file__, 'exec')",  # code passing for a library's
    "open('/etc/../root/x', 'w')",
])
def test_a_confined_process_is_refused(code, tmp_path):
    done = run_confined(code, tmp_path)
    assert done.returncode != 0 and "the grader does not allow this" in done.stderr, done.stderr[-500:]


def test_a_confined_process_still_imports_computes_and_writes_its_own_folder(tmp_path):
    done = run_confined("import torch, sklearn.manifold; print(torch.ones(2).sum().item());"
                        "open('mine.txt', 'w').write('ok')", tmp_path)
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.strip() == "2.0" and (tmp_path / "mine.txt").read_text() == "ok"


def test_a_confined_process_loads_shapes_net_but_reads_no_other_file_of_vislib(tmp_path):
    """The weights are package data inside vislib's folder, which the runner hides: its rules make
    that one folder readable again (as the runner's and the feedback kernel's rules do)."""
    program = textwrap.dedent(f"""
        from vislib.grading import confine
        from vislib.models import shapes_net, weights_folder
        rules = confine.Rules(readable=confine.python_roots() + confine.SYSTEM_ROOTS + (weights_folder(),),
                              writable=({str(tmp_path)!r},), hidden=(confine.package_folder("vislib"),))
        confine.confine(rules)
        print(shapes_net().fc.out_features, shapes_net(robust=True).fc.out_features)
        open(__import__('vislib').__file__).read()
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.split() == ["8", "8"], done.stderr[-800:]
    assert done.returncode != 0 and "the grader does not allow this: reading" in done.stderr, done.stderr[-500:]


def test_the_deepest_folder_decides_what_a_confined_process_reads():
    from vislib.grading.confine import Rules

    rules = Rules(readable=("/venv", "/venv/lib/vislib/weights"), writable=("/tmp/mine",),
                  hidden=("/venv/lib/vislib/", "/venv/lib/captum"))
    assert rules.may_read("/venv/lib/torch/__init__.py") and rules.may_read("/venv/lib/vislib/weights/a.pt")
    assert rules.may_read("/venv/lib/vislib/weights") and rules.may_read("/tmp/mine/x")
    assert not rules.may_read("/venv/lib/vislib/models.py") and not rules.may_read("/venv/lib/vislib")
    assert not rules.may_read("/venv/lib/vislib/weightsX/a.pt") and not rules.may_read("/venv/lib/captum/x.py")
    assert not rules.may_read("/elsewhere")
    assert not Rules(readable=("/a",), writable=(), hidden=("/a",)).may_read("/a/b")  # both: hidden


@pytest.mark.parametrize("name", ["patches_checks", "anything_and_torch", "ipython_machinery", "vislib_routes",
                                  "exits"])
def test_the_scan_flags_each_family_of_cheats(name):
    replacements, extra, _, _ = grading_course.SUBMISSIONS[name]
    sources = [s for s in list(replacements.values()) + extra if s != grading_course.STUB]
    assert any(integrity.scan(source, ("vislib.saliency",)) for source in sources), name


def test_the_scan_passes_ordinary_solutions():
    source = json.loads((ROOT / "assignments" / "source" / "cam" / "cam.ipynb").read_text())
    for cell in source["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("solution") and cell["cell_type"] == "code":
            assert integrity.scan(grading_course._solution(cell), ("vislib.cam",)) == [], cell["source"]


def test_every_test_cell_is_in_the_form_the_grader_reads():
    for path in (ROOT / "assignments" / "source").glob("*/*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            meta = cell["metadata"].get("nbgrader", {})
            if cell["cell_type"] == "code" and meta.get("grade") and not meta.get("solution"):
                pairs = checks_in("".join(cell["source"]))
                assert pairs and all(check == function for check, function in pairs), (path.name, pairs)
    with pytest.raises(ValueError):
        checks_in("checks.saliency_map(saliency_map)\nassert True")
