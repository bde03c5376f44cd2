"""nbgrader's autograding with a score that the submission cannot raise, and a run that one bad
submission cannot stop. ``assignments/nbgrader_config.py`` puts these in nbgrader's place:

- ``TrustedExecute`` (for nbgrader's ``Execute``) runs the notebook in a confined kernel
  (``vislib.grading.kernel``) for the feedback page, but grades no test cell there. Each test
  cell's checks run here, in the grader, on the learner's functions in a runner
  (``vislib.grading.runner``), which only receives inputs and sends back tensors. A cell that
  hangs or ends the kernel is stopped at its time limit; the kernel starts again and the
  notebook goes on. Learners' warnings cost nothing: test cells show only the checks' words.
- ``CheckedOverwriteCells`` (for ``OverwriteCells``) puts deleted or stripped test cells back and
  reports locked cells that the learner really changed (not nbgrader's hidden-test difference).

Everything worth the instructor's attention goes to ``integrity.csv`` in the course folder: the
routes into the grader that a learner's cells take (``integrity.scan``), what the confined
processes refused, cells stopped for time or an exit, and cells put back.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from jupyter_client.kernelspec import KernelSpec
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader import utils
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import Execute, OverwriteCells
from traitlets import Bool, Integer, Unicode

from vislib.grading.kernel import PROVISIONER

REPORT = "integrity.csv"
REPORT_FIELDS = ("student", "assignment", "notebook", "cell", "kind", "reason")


def report(resources: dict, cell: str, kind: str, reason: str, root: str) -> None:
    """Add one row to the course's ``integrity.csv``."""
    path = Path(root) / REPORT
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(REPORT_FIELDS)
        info = resources["nbgrader"]
        writer.writerow([info["student"], info["assignment"], info["notebook"], cell, kind, reason])


def _course_root(configurable) -> str:
    return CourseDirectory(config=configurable.config).root


def _release_cells(configurable, resources: dict) -> list[dict]:
    """The cells of the learners' version of this notebook (what each learner started from)."""
    info = resources["nbgrader"]
    path = Path(_course_root(configurable)) / "release" / info["assignment"] / f"{info['notebook']}.ipynb"
    return json.loads(path.read_text())["cells"] if path.exists() else []


def is_test_cell(cell) -> bool:
    return cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell)


def checks_in(source: str) -> list[tuple[str, str]]:
    """The checks a test cell runs, as (check, learner's function) pairs: the cell's statements
    must all be ``checks.NAME(FUNCTION)`` or ``checks.NAME(FUNCTION, strict=True)``."""
    found = []
    for statement in ast.parse(source).body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "checks"
                and len(call.args) == 1 and isinstance(call.args[0], ast.Name)):
            raise ValueError(f"a test cell may only call checks.<exercise>(<function>): {ast.unparse(statement)!r}")
        pair = (call.func.attr, call.args[0].id)
        if pair not in found:
            found.append(pair)
    return found


def _imports(cells) -> list[str]:
    """The vislib modules the notebook's code imports: the runner imports them before it is
    confined, since vislib's files are hidden from learner code (``from X import a`` may import
    the module ``X.a`` too). Other modules load from Python's installation as usual."""
    modules = []
    for cell in cells:
        with contextlib.suppress(SyntaxError):
            for node in ast.walk(ast.parse(_python(cell.source))):
                if isinstance(node, ast.Import):
                    modules += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in dict.fromkeys(modules) if m == "vislib" or m.startswith("vislib.")]


def _import_lines(cells) -> str:
    """Only the import statements of the course's own cells: the names the learner's code uses."""
    lines = []
    for cell in cells:
        with contextlib.suppress(SyntaxError):
            tree = ast.parse(_python(cell.source))
            lines += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(dict.fromkeys(lines))


def _python(source: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _stream(text: str) -> NotebookNode:
    return NotebookNode(output_type="stream", name="stdout", text=text)


def _error(name: str, message: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=name, evalue=message, traceback=[f"{name}: {message}"])


class TrustedExecute(Execute):
    """Run the notebook for the feedback page in a confined kernel; grade test cells apart."""

    timeout = Integer(30, help="Seconds a cell (or one call of a learner's function) may run.").tag(config=True)
    submission_timeout = Integer(300, help="Seconds a whole notebook may run.").tag(config=True)
    memory_limit = Integer(8 * 2**30, help="Bytes of address space for the kernel and the runner.").tag(config=True)
    interrupt_on_timeout = Bool(False, help="A hung cell is killed, not interrupted: it may ignore Ctrl-C.")
    shutdown_kernel = Unicode("immediate")

    def preprocess(self, nb, resources, km=None):
        from vislib.grading import remote
        from vislib.grading.zygote import zygote

        zygote()  # it imports torch and vislib while the grader prepares
        self._root = _course_root(self)
        self._resources = resources
        self._started = time.monotonic()
        self._executed: list[int] = []
        self._scratch = tempfile.mkdtemp(prefix="vislib-grading-")
        self._log = os.path.join(self._scratch, "refused.txt")
        release = {"".join(c["source"]) for c in _release_cells(self, resources) if c["cell_type"] == "code"}
        self._tests = {i: checks_in(c.source) for i, c in enumerate(nb.cells) if is_test_cell(c)}
        course_cells = [c for c in nb.cells if c.cell_type == "code" and not is_test_cell(c)
                        and not utils.is_solution(c) and c.source in release]
        learner = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and not is_test_cell(c)
                   and (utils.is_solution(c) or c.source not in release)]
        self._scan(learner)
        self._runner = remote.Runner(
            cells=[(-1, _import_lines(course_cells))] + [(i, c.source) for i, c in learner],
            checks=[check for pairs in self._tests.values() for check, _ in pairs],
            imports=_imports([c for c in nb.cells if c.cell_type == "code"]),
            timeout=self.timeout, memory_bytes=self.memory_limit, cpu_seconds=self.submission_timeout)
        self._runner.start_in_background()
        try:
            return super().preprocess(nb, resources, km)
        finally:
            self._runner.close()
            self._report_runtime()

    # ------------------------------------------------------------------ the kernel for the feedback page

    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        km._kernel_spec = KernelSpec(
            argv=[sys.executable, "-m", "vislib.grading.kernel", "-f", "{connection_file}",
                  "--IPKernelApp.log_level=ERROR"],
            display_name="vislib grading", language="python",
            env={"VISLIB_GRADING_LOG": self._log, "VISLIB_GRADING_MEMORY": str(self.memory_limit)},
            metadata={"kernel_provisioner": {"provisioner_name": PROVISIONER}})
        return km

    def preprocess_cell(self, cell, resources, index):
        if index in self._tests:
            start = time.monotonic()
            cell.outputs = self._grade(index)
            self.log.info("graded %s in %.1f s", [c for c, _ in self._tests[index]], time.monotonic() - start)
            return cell, self.resources
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, self.resources
        if time.monotonic() - self._started > self.submission_timeout:
            cell.outputs = [_error("NotRun", f"the notebook ran over its {self.submission_timeout} s; this cell was "
                                             "not run")]
            return cell, self.resources
        try:
            start = time.monotonic()
            cell = self.execute_cell(cell, index, store_history=True)
            self.log.info("ran cell %d in %.1f s", index + 1, time.monotonic() - start)
            self._executed.append(index)
        except (CellTimeoutError, DeadKernelError) as stop:
            why = (f"ran over its {self.timeout} s limit and was stopped" if isinstance(stop, CellTimeoutError)
                   else "ended the kernel (an exit, a crash, or memory ran out)")
            cell.outputs.append(_error(type(stop).__name__, f"this cell {why}; the notebook went on without it"))
            self._note(cell, index, "failure", f"the cell {why}")
            self._restart_kernel()
        return cell, self.resources

    def _restart_kernel(self) -> None:
        """A new kernel, with the cells that ran so far run again (quietly)."""
        self._new_kernel()
        for index in self._executed:
            quiet = NotebookNode(cell_type="code", source=self.nb.cells[index].source, metadata={}, outputs=[])
            try:
                self.execute_cell(quiet, index, store_history=False)
            except (CellTimeoutError, DeadKernelError):  # it ran before: go on without it
                self._new_kernel()

    def _new_kernel(self) -> None:
        self._cleanup_kernel()  # kills the old kernel (shutdown_kernel is "immediate")
        self.km = self.create_kernel_manager()
        self.start_new_kernel()
        self.start_new_kernel_client()

    # ------------------------------------------------------------------ grading, in this process

    def _grade(self, index: int) -> list[NotebookNode]:
        """The test cell's checks on the learner's functions in the runner: one line per check,
        or the first failure as an error (nbgrader then gives the cell no points)."""
        from vislib import checks
        from vislib.grading.remote import RemoteFunction

        printed = io.StringIO()
        try:
            for check, function in self._tests[index]:
                with contextlib.redirect_stdout(printed), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the checks' words only: a warning costs no point
                    getattr(checks, check)(RemoteFunction(self._runner, function), strict=True)
        except AssertionError as failure:
            failed = _error(type(failure).__name__, str(failure))
        except Exception as failure:  # noqa: BLE001 (a grader failure is a failed check, and reported)
            self._note(self.nb.cells[index], index, "failure", f"the grader failed: {failure!r}")
            failed = _error("GraderError", f"the grader could not check this cell: {failure!r}")
        else:
            return [_stream(printed.getvalue())]
        return ([_stream(printed.getvalue())] if printed.getvalue() else []) + [failed]

    # ------------------------------------------------------------------ the report

    def _scan(self, learner: list) -> None:
        """Flag the learner's cells that take a route into the grader (see ``integrity``)."""
        from vislib import checks  # (imported here: vislib.checks brings torch, which nbgrader's other commands
        from vislib.checks.harness import off_limits_of  # do not need)
        from vislib.grading.integrity import scan

        modules = tuple(m for pairs in self._tests.values() for check, _ in pairs
                        for m in off_limits_of(getattr(checks, check)).modules)
        for index, cell in learner:
            for reason in scan(cell.source, modules):
                self._note(cell, index, "tampering", reason)

    def _report_runtime(self) -> None:
        for index, why in sorted(self._runner.stopped_cells.items()):
            self._note(self.nb.cells[index] if index >= 0 else None, index, "failure",
                       f"in the grader's runner this cell {why}")
        for stopped in self._runner.stopped_calls:
            self._note(None, -1, "failure", f"a check's call of {stopped}")
        refused = set(self._runner.refused)
        if os.path.exists(self._log):
            refused |= set(Path(self._log).read_text().splitlines())
        for what in sorted(refused):
            self._note(None, -1, "tampering", f"refused: {what}")

    def _note(self, cell, index: int, kind: str, reason: str) -> None:
        name = cell.metadata.get("nbgrader", {}).get("grade_id") if cell is not None else None
        report(self._resources, name or (f"cell {index + 1}" if index >= 0 else "-"), kind, reason, self._root)


class CheckedOverwriteCells(OverwriteCells):
    """nbgrader's OverwriteCells, with deleted or stripped test cells put back, and with a report
    of the locked cells the learner changed: compared with the learners' version, not with the
    instructor's (which differs in every test cell by its hidden tests, hence nbgrader's noise)."""

    add_missing_cells = Bool(True, help="Put deleted test cells back (nbgrader's default is not to).")

    def preprocess(self, nb, resources):
        self._root = _course_root(self)
        self._resources = resources
        self._released = {c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"])
                          for c in _release_cells(self, resources) if "nbgrader" in c.get("metadata", {})}
        present = {c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "grade_id" in c.metadata.get("nbgrader", {})}
        nb, resources = super().preprocess(nb, resources)
        for cell in nb.cells:
            name = cell.metadata.get("nbgrader", {}).get("grade_id")
            if name and name not in present and utils.is_grade(cell):
                report(resources, name, "restored", "the cell was deleted or its nbgrader metadata stripped; it was "
                                                    "put back and graded", self._root)
        return nb, resources

    def preprocess_cell(self, cell, resources, cell_index):
        name = cell.metadata.get("nbgrader", {}).get("grade_id")
        if (name in self._released and utils.is_locked(cell) and cell.source != self._released[name]
                and not utils.is_solution(cell)):
            report(resources, name, "changed", "a locked cell was changed; the original was put back", self._root)
        return super().preprocess_cell(cell, resources, cell_index)

    def report_change(self, name, attr, old, new):
        if attr != "checksum":  # checksums differ by the hidden tests; real changes are reported above
            super().report_change(name, attr, old, new)
