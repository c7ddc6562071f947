"""`make docs`' builder (docs/build_site.py) on notebooks already executed: each rendered to HTML with its outputs,
and an index linking every page by its notebook's title, failed runs marked."""

import base64
import importlib.util
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_site", ROOT / "docs" / "build_site.py")
build_site = sys.modules["build_site"] = importlib.util.module_from_spec(spec)  # docs/ is not a package
spec.loader.exec_module(build_site)

# a 1 x 1 PNG
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def executed_notebook(title: str, text: str, error: bool = False):
    """A notebook as papermill leaves it: a title cell, a code cell with printed text and a figure, its duration."""
    nb = nbformat.v4.new_notebook(metadata={"papermill": {"duration": 12.5}})
    code = nbformat.v4.new_code_cell("print(...)", execution_count=1)
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=text),
        nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PIXEL).decode()}),
    ]
    if error:
        code.outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="bad alpha", traceback=[]))
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nWhat this notebook is for: {text}."), code]
    return nb


def test_an_executed_notebook_is_rendered_and_linked_from_the_index(tmp_path):
    executed = tmp_path / "executed"
    executed.mkdir()
    nbformat.write(executed_notebook("Calibration α sweep", "spearman 0.42"), executed / "02_alpha.ipynb")
    nbformat.write(executed_notebook("PAD training", "gold 0.91", error=True), executed / "03_pad.ipynb")

    pages = build_site.build(site=tmp_path, run=False)

    assert [p.html for p in pages] == ["02_alpha.html", "03_pad.html"]
    page = (tmp_path / "02_alpha.html").read_text()
    assert "spearman 0.42" in page and "data:image/png;base64," in page  # outputs and the figure, inline
    assert "<title>Calibration α sweep</title>" in page
    index = (tmp_path / "index.html").read_text()
    assert '<a href="02_alpha.html">Calibration α sweep</a>' in index
    assert '<a href="03_pad.html">PAD training</a>' in index
    assert "What this notebook is for: spearman 0.42." in index and "executed in 12 s" in index
    assert "failed: ValueError: bad alpha" in index and index.count("failed:") == 1


def test_render_only_exits_nonzero_when_a_page_shows_a_failed_run(tmp_path):
    (tmp_path / "executed").mkdir()
    nbformat.write(executed_notebook("Fine", "ok"), tmp_path / "executed" / "a.ipynb")
    assert build_site.main(["--render-only", "--site", str(tmp_path)]) == 0
    nbformat.write(executed_notebook("Broken", "no", error=True), tmp_path / "executed" / "b.ipynb")
    assert build_site.main(["--render-only", "--site", str(tmp_path)]) == 1


def test_titles_and_summaries_come_from_the_committed_notebooks_first_cell():
    nb = nbformat.read(ROOT / "notebooks" / "03_pad_train.ipynb", as_version=4)
    assert build_site.notebook_title(nb) and not build_site.notebook_title(nb).startswith("#")
    assert build_site.notebook_summary(nb)
