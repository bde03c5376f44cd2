"""The Korean layer of the course text: a Korean summary under every section heading of every
notebook and assignment, the discussion and written questions and their model answers in Korean
beside the English, the glossary (용어집) and the README's Korean section. (The checks' messages
are tested in tests/test_checks_language.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ASSIGNMENTS = sorted((ROOT / "assignments" / "source").glob("*/*.ipynb"))
GUIDE = ROOT / "assignments" / "source" / "FACILITATOR_GUIDE.md"
GLOSSARY = ROOT / "용어집.md"
HANGUL = re.compile(r"[\uac00-\ud7a3]")
KOREAN = "**한국어.**"
SUMMARY = "> **요약.**"


def markdown_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]


def headings(text: str, levels: int) -> list[tuple[str, list[str]]]:
    """(heading, the lines after it) for every heading of at most ``levels`` #s outside code blocks
    (nbgrader's ``### BEGIN/END SOLUTION`` markers are not headings)."""
    lines, found, fenced = text.splitlines(), [], False
    for i, line in enumerate(lines):
        fenced ^= line.lstrip().startswith("```")
        if not fenced and re.match(rf"#{{1,{levels}}} ", line) and "BEGIN SOLUTION" not in line \
                and "END SOLUTION" not in line:
            found.append((line, lines[i + 1:]))
    return found


def summary_problem(heading: str, after: list[str]) -> str | None:
    """Why the lines after ``heading`` do not start with a Korean summary of two or three lines."""
    rest = [line for line in after]
    while rest and not rest[0].strip():
        rest.pop(0)
    if not rest or not rest[0].startswith(SUMMARY):
        return f"no '{SUMMARY}' under {heading!r}"
    quote = []
    for line in rest:
        if not line.startswith(">"):
            break
        quote.append(line)
    if not 2 <= len(quote) <= 3:
        return f"the summary under {heading!r} has {len(quote)} lines, not 2 or 3"
    if len(HANGUL.findall("".join(quote))) < 20:
        return f"the summary under {heading!r} is hardly Korean: {quote[0]!r}"
    return None


@pytest.mark.parametrize("path", NOTEBOOKS + ASSIGNMENTS, ids=lambda p: p.stem)
def test_every_section_of_every_notebook_and_assignment_has_its_korean_summary(path):
    found = [(h, after) for cell in markdown_cells(path) for h, after in headings(cell, 2)]
    assert len(found) >= 4, f"{path.name}: only {len(found)} headings found"
    problems = [p for h, after in found if (p := summary_problem(h, after))]
    assert not problems, f"{path.name}: " + "; ".join(problems)


def numbered_items(text: str) -> list[str]:
    """The top-level numbered items of a markdown list, each with its continuation lines."""
    items: list[list[str]] = []
    for line in text.splitlines():
        if re.match(r"\d+\. ", line):
            items.append([line])
        elif items and (line.startswith(" ") or not line.strip()):
            items[-1].append(line)
        elif items and line.strip():
            items.append([])  # the list ended
    return ["\n".join(item) for item in items if item]


def has_korean_form(text: str) -> bool:
    after = text.partition(KOREAN)[2]
    return bool(after) and len(HANGUL.findall(after)) >= 10


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_discussion_question_has_its_korean_form(path):
    (cell,) = [c for c in markdown_cells(path) if c.startswith("## Discussion questions")]
    questions = numbered_items(cell)
    assert len(questions) >= 4, f"{path.name}: {len(questions)} discussion questions"
    missing = [q.splitlines()[0][:60] for q in questions if not has_korean_form(q)]
    assert not missing, f"{path.name}: questions without '{KOREAN}': {missing}"


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_the_written_question_and_its_model_answer_are_in_korean_too(path):
    cells = json.loads(path.read_text())["cells"]
    answers = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
               and c["metadata"].get("nbgrader", {}).get("solution")]
    assert len(answers) == 1, f"{path.name}: {len(answers)} written answers"
    question, answer = "".join(cells[answers[0] - 1]["source"]), "".join(cells[answers[0]]["source"])
    assert has_korean_form(question), f"{path.name}: the written question has no '{KOREAN}' form"
    model_answer = answer.partition("### BEGIN SOLUTION")[2].partition("### END SOLUTION")[0]
    assert has_korean_form(model_answer), f"{path.name}: the model answer has no '{KOREAN}' form inside the solution"


def guide_questions(text: str) -> list[str]:
    """The model answers of the guide's section 2: each bold ``**N.`` question with its answer, up to
    the next question or heading."""
    section = text.partition("\n## 2.")[2].partition("\n## 3.")[0]
    blocks = re.split(r"\n(?=\*\*\d+\. |#)", section)
    return [block for block in blocks if re.match(r"\*\*\d+\. ", block)]


def test_every_model_answer_of_the_facilitator_guide_is_in_korean_too():
    text = GUIDE.read_text()
    questions = guide_questions(text)
    assert len(questions) >= 40, f"only {len(questions)} model answers found"
    missing = [q.splitlines()[0][:60] for q in questions if not has_korean_form(q)]
    assert not missing, f"model answers without '{KOREAN}': {missing}"
    problems = [p for h, after in headings(text, 3) if (p := summary_problem(h, after))]
    assert not problems, "; ".join(problems)


def glossary_rows() -> list[list[str]]:
    rows = [line.strip().strip("|").split("|") for line in GLOSSARY.read_text().splitlines()
            if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # without the header and its rule


def test_the_glossary_gives_each_term_its_korean_a_definition_and_where_it_is_taught():
    rows = glossary_rows()
    assert len(rows) >= 60, f"the glossary has {len(rows)} terms"
    for english, korean, definition, where in rows:
        assert english and HANGUL.search(korean + definition), f"{english!r} has no Korean"
        links = re.findall(r"\]\(([^)#]+)", where)
        assert links, f"{english!r} does not say where the course teaches it"
        for link in links:
            assert (ROOT / link).exists(), f"{english!r} links to {link}, which does not exist"
    terms = {row[0].lower() for row in rows}
    for term in ("occlusion", "saliency map", "grad-cam", "gram matrix", "t-sne", "receptive field"):
        assert any(term in t for t in terms), f"the glossary lacks {term!r}"


def test_the_readme_starts_in_korean_and_links_the_glossary():
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", readme, re.M)
    assert sections[0] == "한국어 안내", f"the README's first section is {sections[0]!r}"
    korean = readme.partition("## 한국어 안내")[2].partition("\n## ")[0]
    assert "make lab" in korean and "make test" in korean and "(용어집.md)" in korean
    assert readme.count("(용어집.md)") >= 2  # in the English part too
    assert "용어집.md" in markdown_cells(ROOT / "notebooks" / "00_black_box.ipynb")[0]
