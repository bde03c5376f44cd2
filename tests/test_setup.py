"""The course's set-up promises: pins agree, notebooks are stored clean, the README's two commands."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _pins(lines):
    matches = (re.match(r"^\s*(?:- )?([A-Za-z0-9_.-]+)==(\S+)", line) for line in lines)
    return {m.group(1).lower(): m.group(2) for m in matches if m}


def test_environment_yml_pins_agree_with_constraints():
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    environment = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert constraints["torch"] == "2.14.1" and constraints["torchvision"] == "0.29.1"
    assert environment == constraints
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_every_dependency_is_pinned():
    pyproject = (ROOT / "pyproject.toml").read_text()
    names = {name.lower() for name in re.findall(r'^\s+"([A-Za-z0-9_.-]+)[^"]*",?\s*(?:#.*)?$', pyproject, flags=re.M)}
    names.discard("setuptools")
    assert {"jupyterlab", "jupyterlab-language-pack-ko-kr"} <= names  # the core dependencies, one a line
    assert names <= set(_pins((ROOT / "constraints.txt").read_text().splitlines())) | {"pip"}


def test_jupyterlab_speaks_korean():
    """The pinned Korean language pack is a dependency of vislib, so `make setup` (hence `make lab` and `make
    test`) installs it, and JupyterLab lists Korean (ko_KR) under Settings > Language."""
    from importlib.metadata import version

    from jupyterlab_server.translation_utils import get_language_pack, get_language_packs

    pins = _pins((ROOT / "constraints.txt").read_text().splitlines())
    pack = pins["jupyterlab-language-pack-ko-kr"]
    assert pack.split(".")[0] == pins["jupyterlab"].split(".")[0], "a pack for another JupyterLab major version"
    assert version("jupyterlab-language-pack-ko-KR") == pack, "run `make setup`: the venv has another Korean pack"
    packs, _ = get_language_packs("en")
    assert packs["ko_KR"]["nativeName"].startswith("한국어"), packs
    strings, _ = get_language_pack("ko_KR")
    assert re.search("[가-힣]", strings["jupyterlab"]["Settings"][0]), strings["jupyterlab"]["Settings"]


def test_readme_quick_start_is_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \S+)$", quick, flags=re.M)
    assert commands == ["make lab", "make test"]


def test_ci_runs_make_test_offline():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "VISLIB_OFFLINE=1" in ci


def test_course_notebooks_are_all_there():
    expected = ["00_black_box", "01_embeddings", "02_activations", "03_class_visualization", "04_saliency",
                "05_cam", "06_neural_style", "07_adversarial"]
    assert [p.stem for p in NOTEBOOKS] == expected


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
        assert not dirty, f"{path.name}: cells {dirty} carry outputs; run `make strip`"


def test_notebooks_assert_their_claims_and_end_with_discussion_questions():
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert "assert " in code, f"{path.name} asserts nothing"
        last_markdown = "".join(next(c["source"] for c in reversed(cells) if c["cell_type"] == "markdown"))
        assert "discussion" in last_markdown.lower(), f"{path.name} must end with discussion questions"
