"""The notebooks as a static HTML site (``make docs``): each notebook in notebooks/ executed with its defaults by
papermill, rendered to HTML by nbconvert, and an ``index.html`` listing them by title.

    python docs/build_site.py                                   # every notebook: execute, render, index
    python docs/build_site.py --notebooks 01_irl_reward.ipynb   # a subset (the index lists what the site holds)
    python docs/build_site.py --render-only                     # render the executed copies already in the site

The executed copies go to ``<site>/executed/`` (the committed notebooks stay output-free); the kernel runs in the
repository root, as ``make notebook-figures`` runs it, so each notebook writes its metrics and figures to its
default ``output_dir`` under ``runs/`` and nothing to ``figures/`` (``publish`` stays False). A notebook that fails
still gets its page, showing the error, and is marked in the index; the build then exits with status 1.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SITE = ROOT / "docs" / "site"


@dataclass
class Page:
    """One notebook's page in the site."""

    name: str  # the notebook's file name
    title: str
    summary: str
    html: str  # the page's file name, relative to the site
    seconds: float | None = None  # execution time papermill recorded
    error: str | None = None  # the first error output, if the run failed


def notebook_title(nb) -> str:
    """The notebook's H1 (its first markdown cell's ``# `` line), else the empty string."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            return ""
    return ""


def notebook_summary(nb) -> str:
    """The first paragraph after the title in the first markdown cell (the notebook's purpose), as markdown."""
    markdown = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    paragraphs = [p.strip() for p in markdown.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
    return paragraphs[0] if paragraphs else ""


def execute(source: Path, executed: Path, cwd: Path = ROOT) -> str | None:
    """Run ``source`` with its defaults into ``executed``; returns the error's last line, or None when it ran.
    papermill writes the executed copy either way (a failed one with its error output)."""
    import papermill

    os.environ["WORKBENCH_WIDGETS"] = "0"  # explorers draw their static figure even when a Jupyter server started us
    try:
        papermill.execute_notebook(str(source), str(executed), kernel_name="python3", cwd=str(cwd), progress_bar=False)
    except papermill.PapermillExecutionError as error:
        return f"{error.ename}: {error.evalue}"
    return None


def first_error(nb) -> str | None:
    """The first error output of an executed notebook as ``ename: evalue``, else None."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                return f"{output.ename}: {output.evalue}"
    return None


def render(executed: Path, site: Path) -> Page:
    """``executed`` rendered to ``<site>/<stem>.html`` (nbconvert's JupyterLab template, images inline)."""
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    title = notebook_title(nb) or executed.stem
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb, resources={"metadata": {"name": title}})
    page = Page(executed.name, title, notebook_summary(nb), f"{executed.stem}.html", error=first_error(nb))
    page.seconds = nb.metadata.get("papermill", {}).get("duration")
    (site / page.html).write_text(body, encoding="utf-8")
    return page


INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>prefdistill-workbench notebooks</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }}
li {{ margin-bottom: 1rem; }}
.meta {{ color: #666; font-size: 0.9em; }}
.failed {{ color: #b00; font-weight: bold; }}
</style>
</head>
<body>
<h1>prefdistill-workbench notebooks</h1>
<p>Each notebook executed with its default parameters (<code>make docs</code>, {built}).</p>
<ol>
{items}
</ol>
</body>
</html>
"""


def write_index(pages: list[Page], site: Path) -> Path:
    """``<site>/index.html``: each page linked by its notebook's title, with its purpose and run time or error."""
    from nbconvert.filters.markdown import markdown2html

    items = []
    for page in pages:
        meta = html.escape(page.name)
        if page.seconds is not None:
            meta += f", executed in {page.seconds:.0f} s"
        if page.error:
            meta += f' <span class="failed">failed: {html.escape(page.error)}</span>'
        items.append(
            f'<li><a href="{html.escape(page.html)}">{html.escape(page.title)}</a>'
            f'{markdown2html(page.summary)}<span class="meta">{meta}</span></li>'
        )
    path = site / "index.html"
    built = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(INDEX.format(built=built, items="\n".join(items)), encoding="utf-8")
    return path


def build(names: list[str] | None = None, site: Path = SITE, run: bool = True) -> list[Page]:
    """Execute (``run``) and render ``names`` (default: every notebook), then index every executed copy the site
    holds. Returns the pages of the index."""
    executed_dir = site / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    names = names or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name in names if run else []:
        start = time.monotonic()
        print(f"executing {name} ...", flush=True)
        error = execute(NOTEBOOKS / name, executed_dir / name)
        print(f"  {time.monotonic() - start:.0f} s" + (f", failed: {error}" if error else ""), flush=True)
    pages = [render(executed, site) for executed in sorted(executed_dir.glob("*.ipynb"))]
    index = write_index(pages, site)
    print(f"{len(pages)} pages, index: {index}")
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=SITE, help="output folder (default: docs/site)")
    parser.add_argument("--notebooks", nargs="+", help="notebook file names in notebooks/ (default: all)")
    parser.add_argument("--render-only", action="store_true", help="render <site>/executed/ without executing")
    args = parser.parse_args(argv)
    pages = build(args.notebooks, args.site, run=not args.render_only)
    return 1 if any(p.error for p in pages) else 0


if __name__ == "__main__":
    sys.exit(main())
