"""The documentation stays true: docstrings, the README's examples and synopsis, the site.

- every public object (what ``jaxdescent`` and each public module export in ``__all__``, and
  the public methods of those classes) has a docstring;
- the README's command synopsis lists exactly the options of ``jaxdescent --help``, with the
  defaults the parsers use;
- the README's Equinox example runs (when Equinox is installed);
- ``mkdocs build --strict`` passes (when the ``docs`` extra is installed; the ``test`` extra
  includes it). The test builds with ``JAXDESCENT_DOCS_EXECUTE=false``: the notebooks are
  rendered without being executed, since ``tests/test_notebooks.py`` executes every one of
  them already;
- the built site's math renders: every page with math (the guide's and API's arithmatex, the
  notebooks' ``$...$``) loads the MathJax configuration and MathJax once, and MathJax, as
  configured in ``docs/javascripts/mathjax.js``, finds all of it (no raw TeX is left where
  MathJax does not look, no delimiter it does not know). MathJax's search for math is
  reproduced here from its source (no browser, no network);
- ``jaxdescent bench`` reports a case whose peer library is missing as skipped (the README's
  promise for the ``plot`` install).

The guide's examples (``docs/index.md``, ``docs/guide/*.md``) run as doctests with the suite.
"""

from __future__ import annotations

import argparse
import ast
import html.parser
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import jaxdescent as jd
from jaxdescent import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


# --- docstrings ------------------------------------------------------------------------------


def _public_modules() -> list[types.ModuleType]:
    """``jaxdescent`` and every module it exports."""
    return [jd] + [
        getattr(jd, name) for name in jd.__all__ if isinstance(getattr(jd, name), types.ModuleType)
    ]


def _attribute_docstrings(module: types.ModuleType) -> set[str]:
    """Names assigned at module level and followed by a string: ``X = ...`` then ``\"\"\"doc\"\"\"``
    (the attribute docstrings that mkdocstrings and IDEs show)."""
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for first, second in zip(tree.body, tree.body[1:]):
        doc = (
            isinstance(second, ast.Expr)
            and isinstance(second.value, ast.Constant)
            and isinstance(second.value.value, str)
            and second.value.value.strip()
        )
        if not doc:
            continue
        if isinstance(first, ast.Assign):
            names |= {t.id for t in first.targets if isinstance(t, ast.Name)}
        elif isinstance(first, ast.AnnAssign) and isinstance(first.target, ast.Name):
            names.add(first.target.id)
    return names


def _own_class_doc(cls: type) -> str | None:
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip() or doc.startswith(f"{cls.__name__}("):  # NamedTuple's default
        return None
    return doc


def _missing_docstrings() -> list[str]:
    missing = []
    seen: set[int] = set()
    for module in _public_modules():
        if not (module.__doc__ or "").strip():
            missing.append(f"{module.__name__} (module)")
        for name in getattr(module, "__all__", []):
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            where = f"{module.__name__}.{name}"
            if isinstance(obj, types.ModuleType):
                continue  # checked as a module
            if isinstance(obj, type):
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                if _own_class_doc(obj) is None:
                    missing.append(where)
                if obj.__module__.startswith("jaxdescent"):
                    for attr, value in vars(obj).items():
                        if attr.startswith("_"):
                            continue
                        if isinstance(value, (types.FunctionType, property)) or isinstance(
                            value, (classmethod, staticmethod)
                        ):
                            if not inspect.getdoc(getattr(obj, attr)):
                                missing.append(f"{where}.{attr}")
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                if id(obj) in seen:
                    continue
                seen.add(id(obj))
                if not (obj.__doc__ or "").strip():
                    missing.append(where)
            elif name not in _attribute_docstrings(module):
                # a constant, type alias or callable instance: a docstring after its assignment
                missing.append(f"{where} (attribute docstring)")
    return missing


def test_every_public_object_has_a_docstring():
    missing = _missing_docstrings()
    assert not missing, "public objects without a docstring:\n  " + "\n  ".join(missing)


def test_every_public_module_declares_all():
    lacking = [m.__name__ for m in _public_modules() if not hasattr(m, "__all__")]
    assert not lacking, f"public modules without __all__: {lacking}"


def test_every_public_module_has_an_api_page():
    pages = {p.stem for p in (ROOT / "docs" / "api").glob("*.md")}
    modules = {m.__name__.split(".")[-1] for m in _public_modules()} - {"results"}  # on jaxdescent
    assert modules <= pages, f"modules without a page in docs/api/: {sorted(modules - pages)}"


def test_the_version_is_in_one_place():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject
    assert 'attr = "jaxdescent.__version__"' in pyproject
    assert cli._version() == jd.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", jd.__version__)


# --- the README's command synopsis -----------------------------------------------------------


def _synopsis() -> dict[str, list[tuple[str, str | None]]]:
    """``{command: [(option, shown value or None)]}`` from the README's ```text block."""
    block = re.search(r"```text\n(jaxdescent .*?)```", README, re.S)
    assert block, "the README has no ```text block with the jaxdescent command synopsis"
    commands: dict[str, list[tuple[str, str | None]]] = {}
    current = None
    for line in block.group(1).splitlines():
        if line.startswith("jaxdescent "):
            current = line.split()[1]
            commands[current] = []
        for option, value in re.findall(r"\[(--[\w-]+)(?:[ =]([^\]]+))?\]", line):
            commands[current].append((option, value or None))
    return commands


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_readme_synopsis_lists_every_command_and_option():
    synopsis, parsers = _synopsis(), _subparsers()
    assert set(synopsis) == set(parsers), "the README's synopsis and the CLI's commands differ"
    for name, parser in parsers.items():
        options = {
            s
            for a in parser._actions
            for s in a.option_strings
            if s.startswith("--") and s != "--help"
        }
        shown = {option for option, _ in synopsis[name]}
        assert shown == options, (
            f"jaxdescent {name}: README shows {sorted(shown)}, --help has {sorted(options)}"
        )


def test_readme_synopsis_shows_the_parsers_defaults():
    parsers = _subparsers()
    for name, entries in _synopsis().items():
        parser = parsers[name]
        for option, value in entries:
            action = next(a for a in parser._actions if option in a.option_strings)
            placeholder = {action.metavar, action.dest.upper()}
            if value is None or value in placeholder:
                continue
            try:
                args = parser.parse_args([f"{option}={value}"])
            except SystemExit:
                pytest.fail(
                    f"README shows `jaxdescent {name} {option} {value}`, which --help refuses"
                )
            if action.default is None:  # a default computed at run time (e.g. per problem)
                continue
            assert getattr(args, action.dest) == action.default, (
                f"README shows `jaxdescent {name} {option} {value}`, but the default is "
                f"{action.default!r}"
            )


def test_readme_links_the_docs_build():
    assert "pip install -e '.[docs]' && mkdocs serve" in README


# --- the README's Equinox example ------------------------------------------------------------


def test_readme_equinox_example_runs():
    pytest.importorskip("equinox")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "eqx.partition" in b]
    assert blocks, "the README has no Equinox example (eqx.partition)"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (Equinox example)", "exec"), namespace)
    res = namespace["res"]
    assert float(res.final_loss) < float(res.losses[0]), "the Equinox fit did not lower the loss"
    import equinox as eqx

    assert isinstance(namespace["model"], eqx.Module)


# --- the site --------------------------------------------------------------------------------


def _build_site(folder: Path) -> None:
    """``mkdocs build --strict`` into ``folder`` (notebooks not executed)."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        if importlib.util.find_spec(module.split(".")[0]) is None or (
            "." in module and importlib.util.find_spec(module) is None
        ):
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "JAXDESCENT_DOCS_EXECUTE": "false", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def test_mkdocs_build_strict(tmp_path):
    """The site builds, with every page and notebook, and its math renders (one test, so that
    the site is built once whichever worker runs it)."""
    site = tmp_path
    _build_site(site)
    for page in ["index.html", "api/optim/index.html", "guide/reliability/index.html"]:
        assert (site / page).is_file(), page
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    rendered = sorted(p.parent.name for p in site.glob("notebooks/*/index.html"))
    assert rendered == notebooks
    api = (site / "api" / "optim" / "index.html").read_text(encoding="utf-8")
    assert 'id="jaxdescent.optim.adam"' in api and "arithmatex" in api
    _assert_every_page_with_math_renders(site)


# How MathJax 3 finds TeX in a page (mathjax-full 3.2, ts/handlers/html/HTMLDomStrings.ts and
# ts/input/tex/FindTeX.ts), reproduced for the checks below: it walks each container of
# ``startup.elements`` (default: the body), skips the contents of SKIP_TAGS and of elements
# whose class matches ``ignoreHtmlClass`` (unless it matches ``processHtmlClass``: then their
# contents are searched again), splits the text at every element (but <br>, <wbr>, comments),
# and in each piece matches the configured delimiters, braces balanced.

SKIP_TAGS = {"script", "noscript", "style", "textarea", "pre", "code", "annotation"}
SKIP_TAGS |= {"annotation-xml"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"}
VOID_TAGS |= {"source", "track", "wbr"}
INCLUDED_TAGS = {"br": "\n", "wbr": ""}  # extend the text instead of splitting it
MATHJAX_SCRIPT = re.compile(r"/mathjax@3[^/]*/es5/tex-[\w-]+\.js$")
CONFIG_SCRIPT = "javascripts/mathjax.js"


class _Text:
    def __init__(self, data: str):
        self.data = data


class _Element:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: _Element | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Element | _Text] = []

    @property
    def classes(self) -> str:
        return self.attrs.get("class") or ""

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, _Element):
                yield from child.iter()

    def text(self) -> str:
        return "".join(c.data if isinstance(c, _Text) else c.text() for c in self.children)


class _TreeBuilder(html.parser.HTMLParser):
    """A page as a tree of elements and text (entities decoded, as the DOM has them)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = _Element("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = _Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        if tag not in VOID_TAGS:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(_Element(tag, dict(attrs), self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:  # else a stray end tag: ignored
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(_Text(data))


def _parse(page: str) -> _Element:
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


def _mathjax_config(script: str) -> dict:
    """The object that ``docs/javascripts/mathjax.js`` assigns to ``window.MathJax``: JSON, or
    a JavaScript object literal with JSON values (bare keys and trailing commas are read)."""
    match = re.search(r"window\.MathJax\s*=\s*(\{.*?\})\s*;", script, re.S)
    assert match, "mathjax.js does not set window.MathJax = {...};"
    literal = re.sub(r"([{,]\s*)([A-Za-z_$][\w$]*)\s*:", r'\1"\2":', match.group(1))
    literal = re.sub(r",(\s*[}\]])", r"\1", literal)
    try:
        return json.loads(literal)
    except json.JSONDecodeError as error:
        raise AssertionError(f"mathjax.js: window.MathJax is not read as JSON ({error})") from None


class _FindTeX:
    """MathJax's FindTeX for one TeX input configuration."""

    def __init__(self, tex: dict):
        inline = tex.get("inlineMath", [["\\(", "\\)"]])
        display = tex.get("displayMath", [["$$", "$$"], ["\\[", "\\]"]])
        self.delimiters = {open_: close for open_, close in inline + display}
        starts = sorted((re.escape(o) for o in self.delimiters), key=len, reverse=True)
        parts = ["|".join(starts)] if starts else []
        self.env = tex.get("processEnvironments", True)
        if self.env:
            parts.append(r"\\begin\s*\{([^}]*)\}")
        subparts = []
        if tex.get("processEscapes", True):
            subparts.append(r"\\([\\$])")
        if tex.get("processRefs", True):
            subparts.append(r"(\\(?:eq)?ref\s*\{[^}]*\})")
        if subparts:
            parts.append("(" + "|".join(subparts) + ")")
        self.start = re.compile("|".join(parts))

    @staticmethod
    def _find_end(text: str, at: int, close_pattern: str, close: str):
        braces = 0
        for match in re.finditer(close_pattern + r"|\\[a-zA-Z]|\\.|[{}]", text[at:]):
            closing = match.group(1) if match.re.groups and match.group(1) else match.group(0)
            if closing == close and not braces:
                return at + match.end()
            if match.group(0) == "{":
                braces += 1
            elif match.group(0) == "}" and braces:
                braces -= 1
        return None

    def find(self, text: str) -> tuple[list[str], list[str], list[str], str]:
        """``(math, empty, unclosed, rest)``: the delimited math in ``text``, those of it with
        nothing between the delimiters, the opening delimiters that are never closed (MathJax
        leaves those, and what follows them, as text), and the text less the math and the
        escaped characters."""
        math, empty, unclosed, position, rest = [], [], [], 0, text
        while match := self.start.search(text, position):
            environment = match.group(1) if self.env else None
            if environment is not None:
                close = "{" + environment + "}"
                end = self._find_end(
                    text, match.end(), r"\\end\s*(\{" + re.escape(environment) + r"\})", close
                )
            elif match.lastindex:  # an escaped \\ or \$, or a \ref: consumed, not math
                end = match.end()
                rest = rest[: match.start()] + " " * (end - match.start()) + rest[end:]
                position = end
                continue
            else:
                close = self.delimiters[match.group(0)]
                end = self._find_end(text, match.end(), re.escape(close), close)
            if end is None:
                unclosed.append(text[match.start() : match.start() + 40])
                position = match.end()
            else:
                math.append(text[match.start() : end])
                if not text[match.end() : end - len(close)].strip():
                    empty.append(math[-1])
                rest = rest[: match.start()] + " " * (end - match.start()) + rest[end:]
                position = end
        return math, empty, unclosed, rest


# TeX as authors write it: where MathJax does not look, or in delimiters it is not configured
# for, it shows raw on the page
RAW_TEX = re.compile(
    r"\\\(.+?\\\)|\\\[.+?\\\]|\$\$.+?\$\$|\\begin\{\w+\*?\}|\$[^$\n]*[\\^_{}=][^$\n]*\$", re.S
)


def _matches(selector: str, element: _Element) -> bool:
    """``element`` matches ``selector``, a class (``.name``) or a tag with a class."""
    match = re.fullmatch(r"([a-z][a-z0-9]*)?\.([\w-]+)", selector)
    assert match, f"startup.elements: the test reads '.class' or 'tag.class', not {selector!r}"
    tag, name = match.groups()
    return (tag is None or element.tag == tag) and name in element.classes.split()


def _page_math(page: str, config: dict) -> dict:
    """What MathJax, configured by ``config``, makes of ``page``: the math it typesets, the
    delimiters it finds unclosed, the TeX it never looks at, and the MathJax scripts."""
    root = _parse(page)
    options = config.get("options", {})
    ignore = re.compile(
        r"(?:^| )(?:" + options.get("ignoreHtmlClass", "mathjax_ignore") + r")(?: |$)"
    )
    process = re.compile(
        r"(?:^| )(?:" + options.get("processHtmlClass", "mathjax_process") + r")(?: |$)"
    )
    skip = options.get("skipHtmlTags", SKIP_TAGS)
    if isinstance(skip, dict):  # MathJax's {"[-]": [...], "[+]": [...]} edits of the default
        skip = (SKIP_TAGS - set(skip.get("[-]", []))) | set(skip.get("[+]", []))
    skip = set(skip)
    find = _FindTeX(config.get("tex", {}))
    selectors = config.get("startup", {}).get("elements")
    if selectors is None:
        containers = [e for e in root.iter() if e.tag == "body"]
    else:
        containers = [e for e in root.iter() if any(_matches(s, e) for s in selectors)]

    searched: list[str] = []  # the pieces of text that MathJax searches for math
    seen: set[int] = set()  # the text nodes in them (their ids)

    def walk(element: _Element, ignored: bool, pieces: list[list[str]]):
        is_processed = bool(process.search(element.classes))
        if not element.children or (element.tag in skip and not is_processed):
            return
        ignored = (ignored or bool(ignore.search(element.classes))) and not is_processed
        pieces.append([])
        for child in element.children:
            if isinstance(child, _Text):
                if not ignored:
                    pieces[-1].append(child.data)
                    seen.add(id(child))
            elif child.tag in INCLUDED_TAGS:
                if not ignored:
                    pieces[-1].append(INCLUDED_TAGS[child.tag])
            else:
                walk(child, ignored, pieces)
                pieces.append([])

    for container in containers:
        pieces: list[list[str]] = []
        walk(container, False, pieces)
        searched += ["".join(piece) for piece in pieces if piece]

    math, empty, unclosed, unknown = [], [], [], []
    for text in searched:
        found, none, left, rest = find.find(text)
        math += found
        empty += none
        unclosed += left
        unknown += [m.group(0)[:60] for m in RAW_TEX.finditer(rest)]

    raw = []  # TeX in text that MathJax never searches (skipped tags aside)

    def unsearched(element: _Element):
        if element.tag in skip or "hidden" in element.attrs:
            return
        if "clipboard-copy-txt" in element.classes.split():
            return  # mkdocs-jupyter's copy of a code cell's source, for its copy button (hidden)
        for child in element.children:
            if isinstance(child, _Text):
                if id(child) not in seen:
                    raw.extend(m.group(0)[:60] for m in RAW_TEX.finditer(child.data))
            else:
                unsearched(child)

    unsearched(root)
    scripts = [e.attrs for e in root.iter() if e.tag == "script"]
    inline_scripts = [e.text() for e in root.iter() if e.tag == "script" and "src" not in e.attrs]
    arithmatex = [
        (e.tag, e.text().strip()) for e in root.iter() if "arithmatex" in e.classes.split()
    ]
    return {
        "math": math,
        "empty": empty,
        "unclosed": unclosed,
        "unknown": unknown,
        "raw": raw,
        "scripts": scripts,
        "inline_scripts": inline_scripts,
        "arithmatex": arithmatex,
    }


def _math_problems(page: str, config: dict) -> list[str]:
    """Why the math of ``page`` would not render (empty: it would, or there is none)."""
    found = _page_math(page, config)
    problems = [f"MathJax does not look at this TeX: {t!r}" for t in found["raw"]]
    problems += [f"a delimiter MathJax finds unclosed: {t!r}" for t in found["unclosed"]]
    problems += [f"TeX in delimiters MathJax does not know: {t!r}" for t in found["unknown"]]
    problems += [f"empty math {m!r}: a delimiter read as another" for m in found["empty"]]
    found_math = set(found["math"])
    for tag, text in found["arithmatex"]:
        if text not in found_math:  # each arithmatex element must be one piece of math
            problems.append(f"arithmatex <{tag}> MathJax does not typeset whole: {text[:60]!r}")
    if not (found["math"] or problems):
        return []  # no math on the page
    sources = [s.get("src") for s in found["scripts"] if "src" in s]
    configs = [i for i, src in enumerate(sources) if src and src.endswith(CONFIG_SCRIPT)]
    loaders = [i for i, src in enumerate(sources) if src and MATHJAX_SCRIPT.search(src)]
    if len(configs) != 1 or len(loaders) != 1:
        problems.append(
            f"the page loads {CONFIG_SCRIPT} {len(configs)} times and MathJax 3 "
            f"{len(loaders)} times, not once each"
        )
    elif configs[0] > loaders[0]:
        problems.append(f"the page loads MathJax before its configuration ({CONFIG_SCRIPT})")
    others = [
        src
        for i, src in enumerate(sources)
        if i not in configs + loaders and (not src or "mathjax" in src.lower())
    ]
    others += [
        s.get("type")
        for s in found["scripts"]
        if "mathjax" in (s.get("type") or "").lower()  # e.g. text/x-mathjax-config (MathJax 2)
    ]
    others += ["an inline script" for text in found["inline_scripts"] if "MathJax" in text]
    if others:
        problems.append(f"another MathJax loader or configuration on the page: {others}")
    return problems


def _site_config(site: Path) -> dict:
    return _mathjax_config((site / CONFIG_SCRIPT).read_text(encoding="utf-8"))


def _assert_every_page_with_math_renders(site: Path) -> None:
    """Every page with math loads the MathJax configuration and MathJax, once each, and
    MathJax finds all of the page's math; the check sees the math of every notebook and of
    every guide page that has some."""
    config = _site_config(site)
    with_math, problems = set(), {}
    for path in sorted(site.rglob("*.html")):
        page = path.read_text(encoding="utf-8")
        name = str(path.relative_to(site))
        if _page_math(page, config)["math"]:
            with_math.add(name)
        if found := _math_problems(page, config):
            problems[name] = found[:5] + ([f"... {len(found) - 5} more"] if len(found) > 5 else [])
    assert not problems, "math that would not render:\n" + "\n".join(
        f"  {name}:\n    " + "\n    ".join(found) for name, found in problems.items()
    )
    # the check saw the math there is: every notebook and every guide page with math
    expected = {f"notebooks/{p.stem}/index.html" for p in (ROOT / "notebooks").glob("*.ipynb")}
    expected |= {
        f"guide/{p.stem}/index.html"
        for p in (ROOT / "docs" / "guide").glob("*.md")
        if re.search(r"\$\$|\\\(", p.read_text(encoding="utf-8"))
    }
    assert expected <= with_math, f"pages whose math was not found: {sorted(expected - with_math)}"
    assert "api/optim/index.html" in with_math


MATH_CONFIG = {
    "tex": {"inlineMath": [["\\(", "\\)"], ["$", "$"]], "displayMath": [["$$", "$$"]]},
    "startup": {"elements": [".arithmatex", ".jp-RenderedMarkdown"]},
}
CONFIG_TAG = '<script src="../javascripts/mathjax.js"></script>'
LOADER_TAG = '<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js" async></script>'
SCRIPTS = CONFIG_TAG + LOADER_TAG


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('<div class="jp-RenderedMarkdown"><p>so $a^2$ and $$b$$</p></div>' + SCRIPTS, None),
        ('<p><span class="arithmatex">\\(x_1\\)</span></p>' + SCRIPTS, None),
        ("<p>$10 or $20, and <code>$x^2$</code> in code</p>", None),  # no math: no MathJax
        ('<div class="jp-RenderedMarkdown"><p>$a^2$</p></div>', "loads"),
        ("<p>$a^2$ outside the elements</p>" + SCRIPTS, "does not look"),
        ('<div class="other">\\(x\\)</div>' + SCRIPTS, "does not look"),
        ('<div class="jp-RenderedMarkdown"><p>\\[x\\]</p></div>' + SCRIPTS, "does not know"),
        ('<div class="jp-RenderedMarkdown">$a <em>b</em>$</div>' + SCRIPTS, "unclosed"),
        ('<span class="arithmatex">\\[x\\]</span>' + SCRIPTS, "typeset whole"),
        ('<div class="jp-RenderedMarkdown">$$x$$</div>' + SCRIPTS, None),
        (
            '<div class="jp-RenderedMarkdown">$a$</div>' + LOADER_TAG + CONFIG_TAG,
            "before its configuration",
        ),
        (
            '<div class="jp-RenderedMarkdown">$a$</div><script src=""></script>' + SCRIPTS,
            "another",
        ),
        (
            '<div class="jp-RenderedMarkdown">$a$</div>'
            '<script type="text/x-mathjax-config">MathJax.Hub.Config({})</script>' + SCRIPTS,
            "another",
        ),
    ],
)
def test_the_math_check_finds_math_that_would_not_render(body, problem):
    problems = _math_problems(f"<html><body>{body}</body></html>", MATH_CONFIG)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_the_math_check_finds_display_math_read_as_two_empty_inline_maths():
    config = {"tex": {"inlineMath": [["$", "$"]], "displayMath": []}}
    page = f'<body><div class="x">$$x^2$$</div>{SCRIPTS}</body>'
    assert _page_math(page, config)["math"] == ["$$", "$$"]
    assert any("empty math" in p for p in _math_problems(page, config))


def test_the_math_check_follows_mathjax_ignore_and_process_classes():
    """With MathJax's class options (mkdocs-material's suggestion: ignore every element but
    arithmatex's), only the arithmatex elements' own text is searched."""
    config = {
        "tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]},
        "options": {"ignoreHtmlClass": ".*|", "processHtmlClass": "arithmatex"},
    }
    found = _page_math(
        '<body><span class="arithmatex">\\(a\\)</span><div class="jp-RenderedMarkdown">'
        "<p>\\(b\\)</p></div></body>",
        config,
    )
    assert found["math"] == ["\\(a\\)"] and found["raw"] == ["\\(b\\)"]


# --- `jaxdescent bench` without the peer libraries -------------------------------------------


def test_bench_reports_a_case_whose_peer_is_missing_as_skipped(monkeypatch, tmp_path):
    """Under the ``plot`` install (no scipy, scikit-learn or torch) a case that compares with
    them is reported as skipped, with the reason, and the run does not fail."""
    if str(ROOT) not in sys.path:
        monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import run

    for peer in ("scipy", "sklearn", "torch"):
        monkeypatch.setitem(sys.modules, peer, None)  # import fails, find_spec gives None
    results = run.run_cases([4], run.SIZES["tiny"], log=lambda *a, **k: None)
    (record,) = results["cases"]
    assert record["skipped"] == "scipy, sklearn not installed"
    assert "error" not in record
    assert "**skipped**: scipy, sklearn not installed" in run.case_markdown(record)
    out = tmp_path / "r.json"
    monkeypatch.setattr(run, "run_cases", lambda numbers, size: results)
    assert run.main(["--size", "tiny", "--cases", "4", "--json", str(out)]) == 0
