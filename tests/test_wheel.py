"""The course installs as a real package: a wheel built from this checkout, installed with ``--no-deps``
into a fresh virtual environment in a temporary folder apart from the checkout, works there: both
ShapesNets load (their weights are package data), an assignment's check runs, and a notebook runs
top to bottom in the course's kernel, registered there as ``make setup`` registers it, and found
without any account's own Jupyter folder. A hub image or ``pip install git+...`` installs the same
wheel.

Nothing is downloaded: the wheel is built with the setuptools already installed (torch and nbgrader
require it; no build isolation, no index, no pip configuration), and the fresh environment reuses the course
environment's packages through a ``.pth`` file that names its site-packages. A ``.pth`` line that
names a folder only appends it to ``sys.path``; the ``.pth`` files inside that folder are not run,
so the course environment's editable install of this checkout (its finder is started by such a
``.pth``) stays off, and ``vislib`` is the installed wheel's. Each run checks that, and that no file
of the checkout is opened.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ("shapes_net.pt", "shapes_net.json", "shapes_net_robust.pt", "shapes_net_robust.json")
# The course environment, whose packages the new one reuses: inside the checkout (.venv) but not of it.
COURSE_ENVIRONMENT = Path(sys.prefix).resolve()
NOTEBOOK = ROOT / "assignments" / "release" / "saliency" / "saliency.ipynb"  # a learner's notebook, and a quick one

# Run first in each process of the new environment: notes every file opened inside the checkout (apart
# from the course environment's packages).
WATCH = textwrap.dedent(f"""
    import os, sys
    _checkout, _course, _opened_in_checkout = {str(ROOT)!r}, {str(COURSE_ENVIRONMENT)!r}, []
    def _inside(path, folder):
        return path == folder or path.startswith(folder + os.sep)
    def _watch(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if _inside(path, _checkout) and not _inside(path, _course):
                _opened_in_checkout.append(path)
    sys.addaudithook(_watch)
""")
# Run last: where the code came from.
REPORT = textwrap.dedent("""
    import json, vislib
    print(json.dumps({"prefix": sys.prefix, "executable": sys.executable, "vislib": vislib.__file__,
                      "sys.path": sys.path, "opened": _opened_in_checkout}))
""")


def kernel_registration() -> list[str]:
    """The arguments after ``$(BIN)/python`` of the Makefile's ``ipykernel install`` line."""
    (line,) = [line for line in (ROOT / "Makefile").read_text().splitlines() if "-m ipykernel install" in line]
    return shlex.split(line.split("$(BIN)/python", 1)[1])


def offline_env(venv: Path | None = None) -> dict[str, str]:
    """This process's environment without what could point Python at the checkout or pip at an index;
    with ``venv``: that environment first on PATH, as an activated one."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                                                     "VIRTUAL_ENV", "COVERAGE_PROCESS_START")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1")
    if venv is not None:
        env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


def run(command: list, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    assert not folder.resolve().is_relative_to(ROOT), f"{folder} is inside the checkout: use another --basetemp"
    return folder


@pytest.fixture(scope="module")
def wheel(outside) -> Path:
    """The wheel of a copy of the checkout's package sources: pip builds in the source folder, and a
    build there would leave build/ and vislib.egg-info/ in the checkout (and setuptools' build/ can
    slip a deleted file into the next wheel)."""
    source = outside / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "vislib", source / "vislib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
         "--wheel-dir", outside / "dist", source], cwd=outside, env=offline_env())
    (built,) = (outside / "dist").glob("vislib-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(outside, wheel) -> Path:
    """A fresh environment with the wheel installed (--no-deps, by the course environment's pip run
    with the new interpreter, before the course's packages are visible there), then the course
    environment's site-packages added through a .pth file, and the course's kernel registered."""
    folder = outside / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", folder], cwd=outside, env=offline_env())
    python = folder / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-cache-dir",
         wheel], cwd=outside, env=offline_env())
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=outside,
                             env=offline_env()).stdout.strip())
    course = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    (site_packages / "course-environment.pth").write_text("".join(f"{path}\n" for path in course))
    # The Jupyter folder of the account that runs make: a registration there (--user) is not one for all.
    run([python, *kernel_registration()], cwd=outside,
        env={**offline_env(folder), "JUPYTER_DATA_DIR": str(outside / "make-runner-jupyter")})
    return folder


def check_report(output: str, venv: Path) -> dict:
    """The REPORT line of a run in ``venv``: it ran there, on the installed vislib, and read nothing
    of the checkout."""
    report = json.loads(output.strip().splitlines()[-1])
    assert Path(report["prefix"]).resolve() == venv.resolve()
    assert Path(report["executable"]).parent.resolve() == (venv / "bin").resolve()
    assert Path(report["vislib"]).resolve().is_relative_to(venv.resolve()), report["vislib"]
    of_checkout = [entry for entry in report["sys.path"] if Path(entry or ".").resolve().is_relative_to(ROOT)
                   and not Path(entry).resolve().is_relative_to(COURSE_ENVIRONMENT)]
    assert not of_checkout, f"the new environment imports from the checkout: {of_checkout}"
    assert report["opened"] == [], f"the installed package opened files of the checkout: {report['opened']}"
    return report


def test_the_wheel_holds_vislib_and_its_weights_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    metadata = {name for name in names if re.match(r"vislib-[^/]+\.dist-info/", name)}
    package = {path.relative_to(ROOT).as_posix() for path in (ROOT / "vislib").rglob("*")
               if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}
    assert {f"vislib/weights/{name}" for name in WEIGHTS} <= package
    # Every file of the package, its weights and their records included; no tests, notebooks, assignments.
    assert names - metadata == package, (f"missing from the wheel: {sorted(package - names)}; "
                                         f"not of the package: {sorted(names - metadata - package)}")
    with zipfile.ZipFile(wheel) as archive:
        for name in WEIGHTS:
            assert archive.read(f"vislib/weights/{name}") == (ROOT / "vislib" / "weights" / name).read_bytes()


def test_the_installed_wheel_loads_both_shapes_nets_and_runs_a_check(venv, outside):
    program = WATCH + textwrap.dedent("""
        import torch
        from vislib import checks, models
        from vislib.data import make_shapes

        shapes = make_shapes(64, seed=10_000)
        for robust in (False, True):
            model = models.shapes_net(robust=robust)  # the sha256 of each file is checked against its record
            with torch.no_grad():
                accuracy = (model(shapes.images).argmax(1) == shapes.labels).float().mean().item()
            assert accuracy > 0.85, (robust, accuracy)
        assert models.weights_folder().startswith(os.path.realpath(sys.prefix) + os.sep), models.weights_folder()

        def saliency_map(model, x, target):  # a learner's correct answer to the saliency assignment
            x = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
            return grad.abs().amax(dim=1)

        checks.saliency_map(saliency_map)  # raises AssertionError with a hint when the answer is wrong
        try:
            checks.saliency_map(lambda model, x, target: saliency_map(model, x, target) * 2)
        except AssertionError:
            pass
        else:
            raise SystemExit("the check passed a wrong answer")
    """) + REPORT
    done = run([venv / "bin" / "python", "-c", program], cwd=outside, env=offline_env(venv))
    check_report(done.stdout, venv)


def test_a_notebook_runs_in_a_kernel_of_the_installed_wheel(venv, outside):
    """The notebook, copied out of the checkout, run by nbclient in the new environment in the kernel
    "vislib" that the Makefile's command registered there, with an empty Jupyter folder of the
    account's own (JUPYTER_DATA_DIR, where ``--user`` registers): any account sees the kernel."""
    folder = outside / "notebooks"
    folder.mkdir()
    shutil.copy2(NOTEBOOK, folder / NOTEBOOK.name)
    program = textwrap.dedent(f"""
        import sys, nbclient, nbformat

        notebook = nbformat.read({str(folder / NOTEBOOK.name)!r}, as_version=4)
        notebook.cells.insert(0, nbformat.v4.new_code_cell({WATCH!r}))
        notebook.cells.append(nbformat.v4.new_code_cell({REPORT!r}))
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="vislib",
                                resources={{"metadata": {{"path": {str(folder)!r}}}}}).execute()
        print("".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.output_type == "stream"))
    """)
    another_account = outside / "another-account-jupyter"
    another_account.mkdir()
    env = {**offline_env(venv), "JUPYTER_DATA_DIR": str(another_account)}
    done = run([venv / "bin" / "python", "-c", program], cwd=folder, env=env, timeout=600)
    check_report(done.stdout, venv)
