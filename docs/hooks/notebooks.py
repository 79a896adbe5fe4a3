"""mkdocs hook: serve the repository's ``notebooks/*.ipynb`` at ``notebooks/<name>/``.

The notebooks stay where they are (no copies under ``docs/``, no symbolic links): each is
added to the site's files from ``notebooks/`` before mkdocs-jupyter wraps the notebook files,
which renders them (executing them unless ``JAXDESCENT_DOCS_EXECUTE=false``).

Their math is typeset by the site's MathJax (``docs/javascripts/mathjax.js``, loaded on every
page): the MathJax 2 loader and configuration that nbconvert writes into each notebook page is
taken out, so that a page loads one MathJax, configured once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files


def _notebooks_dir(config) -> Path:
    return Path(config.config_file_path).resolve().parent / "notebooks"


def _title(path: Path) -> str:
    """The notebook's first Markdown heading, else its file name."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip().replace("`", "")
    return path.stem


def on_config(config):
    """Fill the nav's "Notebooks" section with every notebook, in file-name order, after
    the pages listed there: a new notebook needs no edit of mkdocs.yml."""
    for item in config.nav or []:
        if isinstance(item, dict) and "Notebooks" in item:
            section = item["Notebooks"]
            section = [section] if isinstance(section, str) else list(section)
            for path in sorted(_notebooks_dir(config).glob("*.ipynb")):
                section.append({_title(path): f"notebooks/{path.name}"})
            item["Notebooks"] = section
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which wraps .ipynb files
def on_files(files: Files, config) -> Files:
    folder = _notebooks_dir(config)
    for path in sorted(folder.glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(folder.parent),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


# nbconvert's base/mathjax.html.j2: a <script src="{url}"> (empty in this site), then a MathJax 2
# configuration (type text/x-mathjax-config), between these two comments
NBCONVERT_MATHJAX = re.compile(
    r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL
)


def on_page_content(html: str, page, config, files) -> str:
    """Take nbconvert's MathJax 2 loader out of a notebook page (the site loads MathJax 3)."""
    if page.file.src_uri.endswith(".ipynb"):
        html = NBCONVERT_MATHJAX.sub("", html, count=1)
    return html


def on_serve(server, config, builder):
    """``mkdocs serve`` rebuilds when a notebook changes."""
    server.watch(str(_notebooks_dir(config)))
    return server
