"""book/build.py's pieces without running notebooks: explorers become static figures, progress bars
keep their text, the course map comes from notebook 00, summaries from a notebook's first paragraph,
pages load MathJax from the site itself."""

import importlib.util
import re
from pathlib import Path

import nbformat

from vislib import mathjax
from vislib.widgets import EXPLORER_CLASS, PLOT_CLASS

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

PNG = "iVBORw0KGgo="  # any base64 text stands for a figure here


def widget_notebook():
    """A notebook as nbclient leaves it: an explorer (box -> output widget holding a figure) and a
    tqdm progress bar, both as widget views, and the widget state in the metadata."""
    state = {
        "box": {"model_name": "VBoxModel", "state": {"_dom_classes": [EXPLORER_CLASS],
                                                     "children": ["IPY_MODEL_controls", "IPY_MODEL_plot"]}},
        "controls": {"model_name": "HBoxModel", "state": {"children": []}},
        "plot": {"model_name": "OutputModel", "state": {"_dom_classes": [PLOT_CLASS], "outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {"image/png": PNG, "text/plain": "<Figure>"}}]}},
        "bar": {"model_name": "HBoxModel", "state": {"children": []}},
    }

    def view(model_id, text):
        return nbformat.v4.new_output("display_data", data={
            build.WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": model_id}, "text/plain": text})

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# 09 · A *test* notebook\n\nIt checks `build`. Nothing more."),
                      nbformat.v4.new_code_cell("loop()", outputs=[view("bar", "100%|##########| 3/3")]),
                      nbformat.v4.new_code_cell("explorer", outputs=[view("box", "VBox(...)")])]
    notebook.metadata["widgets"] = {build.WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}
    return notebook


def test_explorers_become_their_figures_and_bars_keep_their_text():
    notebook = widget_notebook()
    assert build.freeze_widgets(notebook) == 1
    bar, explorer = notebook.cells[1].outputs, notebook.cells[2].outputs
    assert bar[0]["data"] == {"text/plain": "100%|##########| 3/3"}
    assert "Interactive explorer: below is the figure it drew first" in explorer[0]["data"]["text/html"]
    assert explorer[1]["data"] == {"image/png": PNG} and len(explorer) == 2
    assert "widgets" not in notebook.metadata
    assert build.figures(notebook) == [PNG]


def test_an_explorer_without_a_figure_says_how_it_draws():
    notebook = widget_notebook()
    notebook.metadata["widgets"][build.WIDGET_STATE]["state"]["plot"]["state"]["outputs"] = []
    assert build.freeze_widgets(notebook) == 1
    assert [list(output["data"]) for output in notebook.cells[2].outputs] == [["text/html"]]
    assert "Draw button" in notebook.cells[2].outputs[0]["data"]["text/html"]


def test_title_and_summary():
    title, summary = build.title_and_summary(widget_notebook(), "fallback")
    assert (title, summary) == ("09 · A test notebook", "It checks build.")
    assert build.title_and_summary(nbformat.v4.new_notebook(), "fallback") == ("fallback", "")


def test_course_map_of_notebook_00():
    course = build.course_map(nbformat.read(ROOT / "notebooks" / "00_black_box.ipynb", as_version=4))
    stems = sorted(path.stem[:2] for path in (ROOT / "notebooks").glob("0[1-9]_*.ipynb"))
    assert sorted(course) == stems
    assert course["01"][0] == "model behaviour" and course["05"][0] == "model decisions"
    assert course["06"][0] == "neural style"  # the lecture's own part, not a model decision
    assert all(question[0].isupper() for _, question in course.values())


def test_pages_load_mathjax_from_the_site_not_from_the_network(tmp_path):
    """The site works offline: a page's only script is the MathJax copied into the site, and it is there."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# CAM\n\n$$\\alpha_k^c = \\frac{1}{Z} \\sum_{i,j} A^k_{ij}$$")]
    html = build.render_page(notebook, build.page_exporter(), "CAM", None, None)
    mathjax.install(tmp_path)
    assert re.findall(r"<script[^>]*\bsrc=\"([^\"]*)\"", html) == [mathjax.URL]
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    script, config = re.fullmatch(r"([^?]+)\?config=([^,]+),Safe", mathjax.URL).groups()
    assert (tmp_path / script).is_file() and (tmp_path / "mathjax" / "config" / f"{config}.js").is_file()


def test_the_index_lists_every_learners_assignment_with_its_notebook_and_functions():
    tasks = build.assignments()
    release = sorted(path.name for path in (ROOT / "assignments" / "release").iterdir() if path.is_dir())
    assert [task["name"] for task in tasks] == release
    notebooks = {path.stem for path in (ROOT / "notebooks").glob("*.ipynb")}
    for task in tasks:
        assert task["notebook"] in notebooks, task["name"]
        assert len(task["functions"]) >= 3 and all(name.isidentifier() for name, _ in task["functions"]), task
        assert not any("$" in what for _, what in task["functions"]), "the index has no MathJax"
        assert (ROOT / task["path"]).is_file() and task["path"].startswith("assignments/release/")


def test_the_index_page_shows_the_assignments(tmp_path):
    tasks = build.assignments()
    index = build.jinja2.Environment(loader=build.jinja2.FileSystemLoader(build.TEMPLATES), autoescape=True)
    index.filters["groupby_in_order"] = lambda items, key: [(key, items)]
    html = index.get_template("site_index.html.j2").render(title="t", intro="i", notebooks=[], assignments=tasks,
                                                          nbconvert_version="0", built="now")
    for task in tasks:
        assert task["path"] in html and f'href="{task["download"]}"' in html
    assert "class hub" in html and "make lab" in html
    assert 'class="course-card' not in html  # the site check counts course cards as notebook pages
