"""Build the course site: run every notebook top to bottom and render it as static HTML in build/site/.

The tool is nbconvert (maintained by Jupyter, installed with JupyterLab, so nothing new to install):
nbclient executes each notebook, nbconvert's HTML exporter renders it with JupyterLab's look through a
small template (book/templates/course) that adds a bar to move between notebooks. The index page
(book/templates/site_index.html.j2) is the course map: per notebook a thumbnail (its first figure),
its title and a one-line summary: its question from the course map table in notebook 00, else the
first sentence under its title. The map's parts (model behaviour, model decisions, neural style, ...)
group the cards. Below the map, the index lists the assignments: the learners' versions in
assignments/release/, each with the notebook it belongs to, the functions it asks for (from its first
cell) and how to open it; build/site/assignments/ gets copies to download.

Explorers (vislib.widgets) need a live kernel, so on the site each one becomes a static copy of
the figure it drew first, with a note; the pages load no script except MathJax, whose files are copied
into build/site/mathjax/ from the pinned jupyter-server-mathjax package (MathJax 2.7), so formulas
render with no network. The committed notebooks are never written to; build/site/notebooks/ gets
copies to download.

Usage: python book/build.py [--out build/site] [--timeout 300] [notebooks/NN_name.ipynb ...]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import itertools
import json
import re
import shutil
import sys
import time
from pathlib import Path

import jinja2
import nbconvert
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image

from vislib import mathjax
from vislib.widgets import EXPLORER_CLASS

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "assignments" / "release"
TEMPLATES = Path(__file__).resolve().parent / "templates"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
THUMBNAIL_WIDTH = 480
TITLE = "Seeing inside convolutional networks"
INTRO = ("A hands-on course on CNN visualisation: what the hidden layers compute, which pixels a decision "
         "rests on, what a unit wants to see, and how to check an explanation. Each notebook below was run "
         "top to bottom to make this site; the course map runs in lecture order.")
STATIC_EXPLORER_NOTE = ("Interactive explorer{drawn}. Run the notebook in JupyterLab (<code>make lab</code>) to "
                        "change its controls.")


class NotebookFailed(Exception):
    pass


def execute(path: Path, timeout: int) -> tuple[nbformat.NotebookNode, float]:
    """The notebook run top to bottom in its own folder (widget state kept), and the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as error:
        raise NotebookFailed(f"{path.name}: a cell failed\n{error}") from None
    return notebook, time.perf_counter() - start


def _widget_figures(state: dict, model_id: str):
    """The PNG figures held by the Output widgets inside widget ``model_id`` (a box is walked down)."""
    model = state.get(model_id, {}).get("state", {})
    for output in model.get("outputs", []):
        if "image/png" in output.get("data", {}):
            yield output["data"]["image/png"]
    for child in model.get("children", []):
        yield from _widget_figures(state, child.removeprefix("IPY_MODEL_"))


def freeze_widgets(notebook: nbformat.NotebookNode) -> int:
    """Make widget outputs static and drop the widget state (so the page loads no widget script):
    an explorer becomes a note and the figures its Output widget drew; any other widget (a tqdm
    progress bar) keeps its text form. Returns how many explorers were frozen."""
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    explorers = 0
    for cell in notebook.cells:
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(output)
            elif EXPLORER_CLASS in state.get(view["model_id"], {}).get("state", {}).get("_dom_classes", []):
                explorers += 1
                pngs = list(_widget_figures(state, view["model_id"]))
                drawn = ": below is the figure it drew first" if pngs else " (it draws when its Draw button is pressed)"
                note = f'<div class="explorer-static"><p>{STATIC_EXPLORER_NOTE.format(drawn=drawn)}</p></div>'
                outputs.append(nbformat.v4.new_output("display_data", data={"text/html": note}))
                outputs += [nbformat.v4.new_output("display_data", data={"image/png": png}) for png in pngs]
            elif "text/plain" in output["data"]:
                del output["data"][WIDGET_VIEW]
                outputs.append(output)
        if "outputs" in cell:
            cell.outputs = outputs
    notebook.metadata.pop("widgets", None)
    return explorers


def figures(notebook: nbformat.NotebookNode) -> list[str]:
    """Every PNG output of the notebook (base64), in order."""
    return [output["data"]["image/png"] for cell in notebook.cells for output in cell.get("outputs", [])
            if "image/png" in output.get("data", {})]


def _plain(markdown: str) -> str:
    """Markdown inline syntax removed: links keep their text, emphasis and code marks go."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"[*_`]+", "", text).strip()


def title_and_summary(notebook: nbformat.NotebookNode, fallback: str) -> tuple[str, str]:
    """The first markdown cell's ``# title`` and the first sentence of the paragraph after it."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.strip().splitlines()
        title = _plain(lines[0].lstrip("#")) if lines and lines[0].startswith("# ") else fallback
        paragraphs = [" ".join(block.split()) for block in "\n".join(lines[1:]).split("\n\n") if block.strip()]
        text = next((p for p in paragraphs if not p.startswith(("#", "|", "-", "1.", "```", "$$"))), "")
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", _plain(text), maxsplit=1)[0]
        return title, sentence
    return fallback, ""


def course_map(notebook: nbformat.NotebookNode) -> dict[str, tuple[str, str]]:
    """Notebook 00's course map table (| part | NN name | question |) as {"NN": (part, question)};
    a row with an empty part continues the part above it."""
    rows, part = {}, ""
    for cell in notebook.cells:
        if cell.cell_type != "markdown" or "course map" not in cell.source.lower():
            continue
        for line in cell.source.splitlines():
            fields = [field.strip() for field in line.strip().strip("|").split("|")]
            if len(fields) == 3 and re.match(r"\d\d ", fields[1]):
                part = fields[0] or part
                question = _plain(fields[2])
                rows[fields[1][:2]] = (part, question[:1].upper() + question[1:])
    return rows


def assignments(release: Path = RELEASE) -> list[dict]:
    """The learners' assignments, release/<name>/<name>.ipynb, in name order. From each one's first
    markdown cell: its title (without "Assignment: "), the course notebook it belongs to (the
    "(notebook `NN_name`)" it names) and the numbered list of functions it asks for, as
    (name, what it does) pairs in plain text (no formulas: the index does not load MathJax)."""
    found = []
    for path in sorted(release.glob("*/*.ipynb")):
        if path.stem != path.parent.name:
            continue
        notebook = nbformat.read(path, as_version=4)
        first = next((cell.source for cell in notebook.cells if cell.cell_type == "markdown"), "")
        title, _ = title_and_summary(notebook, path.stem)
        part = re.search(r"\(notebook\s+`(\d\d_\w+)`\)", first)
        items = re.findall(r"^\d+\.\s+`(\w+)`:?\s*(.*(?:\n {2,}\S.*)*)", first, re.M)
        # the index has no MathJax: a formula and the word that introduces it are left out
        functions = [(name, " ".join(_plain(re.sub(r"(\s+(on|of))?\s*\$[^$]+\$", "", text)).split()).rstrip(";."))
                     for name, text in items]
        found.append({"name": path.parent.name, "title": re.sub(r"^Assignment:\s*", "", title),
                      "notebook": part.group(1) if part else None, "functions": functions,
                      "path": f"assignments/release/{path.parent.name}/{path.name}",
                      "download": f"assignments/{path.name}"})
    return found


def thumbnail(png_base64: str, path: Path):
    image = Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB")
    image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
    image.save(path)


def page_exporter() -> nbconvert.HTMLExporter:
    """nbconvert's HTML exporter with the course template, figures embedded, MathJax from the site itself."""
    return nbconvert.HTMLExporter(template_name="course", extra_template_basedirs=[str(TEMPLATES)],
                                  embed_images=True, mathjax_url=mathjax.URL)


def render_page(notebook, exporter, title: str, previous: dict | None, following: dict | None) -> str:
    body, _ = exporter.from_notebook_node(notebook, resources={
        "metadata": {"name": title}, "course": {"previous": previous, "next": following}})
    return body


def build(paths: list[Path], out: Path, timeout: int) -> list[dict]:
    if not paths:
        raise SystemExit("no notebooks to build")
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")
    if out.exists():
        shutil.rmtree(out)
    (out / "thumbs").mkdir(parents=True)
    (out / "notebooks").mkdir()
    (out / "assignments").mkdir()
    tasks = assignments()
    for task in tasks:
        shutil.copy(ROOT / task["path"], out / task["download"])
    shutil.copy(TEMPLATES / "course.css", out / "course.css")
    mathjax.install(out)
    entries, executed = [], []
    failures, course = [], {}
    for path in paths:
        try:
            notebook, seconds = execute(path, timeout)
        except NotebookFailed as failure:  # build the other pages, then fail
            print(failure, file=sys.stderr, flush=True)
            failures.append(path.name)
            continue
        explorers = freeze_widgets(notebook)
        pngs = figures(notebook)
        title, summary = title_and_summary(notebook, path.stem)
        entry = {"stem": path.stem, "page": f"{path.stem}.html", "title": title, "summary": summary,
                 "figures": len(pngs), "explorers": explorers, "seconds": round(seconds, 1),
                 "source": f"notebooks/{path.name}", "thumbnail": f"thumbs/{path.stem}.png" if pngs else None}
        if pngs:
            thumbnail(pngs[0], out / entry["thumbnail"])
        shutil.copy(path, out / entry["source"])
        entries.append(entry)
        executed.append(notebook)
        course.update(course_map(notebook))
        print(f"{seconds:6.1f} s  {path.name}: {len(pngs)} figures, {explorers} explorers", flush=True)

    for entry in entries:  # the course map's question is the better one-line summary
        entry["part"], entry["summary"] = course.get(entry["stem"][:2], ("", entry["summary"]))
    pages = {entry["stem"]: entry for entry in entries}
    for task in tasks:  # link each assignment to its notebook's page (when that page was built)
        task["page"] = pages.get(task["notebook"])

    exporter = page_exporter()
    for i, (entry, notebook) in enumerate(zip(entries, executed)):
        previous = entries[i - 1] if i > 0 else None
        following = entries[i + 1] if i + 1 < len(entries) else None
        (out / entry["page"]).write_text(render_page(notebook, exporter, entry["title"], previous, following),
                                         encoding="utf-8")

    index = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    index.filters["groupby_in_order"] = lambda items, key: [(part, list(group)) for part, group in
                                                            itertools.groupby(items, lambda item: item[key])]
    (out / "index.html").write_text(index.get_template("site_index.html.j2").render(
        title=TITLE, intro=INTRO, notebooks=entries, assignments=tasks, nbconvert_version=nbconvert.__version__,
        built=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")), encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps(entries, indent=1))
    if failures:
        raise SystemExit(f"{len(failures)} notebooks failed, their pages are missing: {', '.join(failures)}")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--timeout", type=int, default=300, help="seconds one cell may take")
    args = parser.parse_args(argv)
    paths = [path.resolve() for path in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    start = time.perf_counter()
    entries = build(paths, args.out, args.timeout)
    print(f"{time.perf_counter() - start:6.1f} s  {len(entries)} pages in {args.out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
