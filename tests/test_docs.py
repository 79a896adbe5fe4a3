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
- ``jaxdescent bench`` reports a case whose peer library is missing as skipped (the README's
  promise for the ``plot`` install).

The guide's examples (``docs/index.md``, ``docs/guide/*.md``) run as doctests with the suite.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
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


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        if importlib.util.find_spec(module.split(".")[0]) is None or (
            "." in module and importlib.util.find_spec(module) is None
        ):
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "JAXDESCENT_DOCS_EXECUTE": "false", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    for page in ["index.html", "api/optim/index.html", "guide/reliability/index.html"]:
        assert (tmp_path / page).is_file(), page
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    rendered = sorted(p.parent.name for p in tmp_path.glob("notebooks/*/index.html"))
    assert rendered == notebooks
    api = (tmp_path / "api" / "optim" / "index.html").read_text(encoding="utf-8")
    assert 'id="jaxdescent.optim.adam"' in api and "arithmatex" in api


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
