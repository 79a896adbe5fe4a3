"""The jaxdescent command: demo, compare, bench, and its errors (exit code 2, one line)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import jaxdescent
from jaxdescent import cli, compare


def test_demo_writes_table_plots_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(
        [
            "demo",
            "--restarts",
            "4",
            "--steps",
            "30",
            "--points",
            "64",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--seed",
            "3",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "best_batch_loss=" in captured.err  # the progress bar names the loss it shows
    for row in (
        "best final loss",
        "median final loss",
        "worst final loss",
        "accuracy of the best",
        "restarts that failed",
        "time",
    ):
        assert row in text
    assert str(out) in text
    for name in ("loss_curves.png", "decision_boundary.png", "final_losses.png"):
        assert (out / name).stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"] == 4 and summary["steps"] == 30
    assert summary["final_loss"]["best"] <= summary["final_loss"]["median"]
    assert 0.0 <= summary["best_accuracy"]["test"] <= 1.0
    threshold = summary["failed"]["stuck_threshold"]
    assert threshold == pytest.approx(2 * summary["final_loss"]["best"] + 0.01)
    assert f"= {threshold:.4f}" in text  # the printed threshold is the one drawn


def test_compare_newton_goes_straight_to_the_minimum(tmp_path, capsys):
    code = cli.main(
        [
            "compare",
            "--problem",
            "rosenbrock",
            "--optimizers",
            "sgd,newton",
            "--start",
            "-1.2,1",
            "--steps",
            "300",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("sgd", "newton"))}
    assert rows["sgd"][2] == "300" and rows["sgd"][3] == "max"
    assert int(rows["newton"][2]) < 40 and rows["newton"][3] == "converged"
    assert float(rows["newton"][-3]) < 1e-12  # final loss
    for name in ("compare_rosenbrock_paths.png", "compare_rosenbrock_losses.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_compare_lr_override_and_other_problem(tmp_path, capsys):
    code = cli.main(
        [
            "compare",
            "--problem",
            "quadratic",
            "--optimizers",
            "adam",
            "--lr",
            "0.05",
            "--steps",
            "20",
            "--tol",
            "1e-3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("adam"))
    assert row.split()[1] == "0.05"
    assert (tmp_path / "compare_quadratic_paths.png").exists()


def test_compare_saddle_plain_newton_stops_on_it_the_others_escape(tmp_path, capsys):
    """The saddle is drawn bounded below (saddle_quartic), so escaping rules reach a minimum."""
    code = cli.main(["compare", "--problem", "saddle", "--steps", "500", "--out", str(tmp_path)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "saddle_quartic" in lines[0]
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.startswith(("sgd", "adam", "plain_newton", "newton", "saddle_free_newton"))
    }
    assert set(rows) == {"sgd", "adam", "plain_newton", "newton", "saddle_free_newton"}
    assert abs(float(rows["plain_newton"][-3])) < 1e-12  # the saddle's value, 0
    for name in ("sgd", "adam", "newton", "saddle_free_newton"):
        assert float(rows[name][-3]) == pytest.approx(-1.0, abs=1e-8), name  # a minimum
    for name in ("compare_saddle_paths.png", "compare_saddle_losses.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_fit_trace_is_the_path_compare_draws():
    import jax.numpy as jnp
    import numpy as np

    import jaxdescent as jd

    opt = jd.optim.sgd(0.1)
    path = jd.fit(lambda x: jnp.sum(x**2), jnp.array([1.0, -2.0]), opt, steps=3, trace=1).trace
    np.testing.assert_allclose(
        path, [[1.0, -2.0], [0.8, -1.6], [0.64, -1.28], [0.512, -1.024]], rtol=1e-6
    )
    res = jd.fit(lambda x: jnp.sum(x**2), jnp.array([1.0, -2.0]), opt, steps=3)
    np.testing.assert_allclose(path[-1], res.params, rtol=1e-6)


def test_default_learning_rates_cover_every_problem_and_rule():
    import jaxdescent as jd

    for problem in jd.problems.CATALOGUE:
        for name in compare.OPTIMIZER_NAMES:
            lr = compare.default_learning_rate(problem, name)
            assert (lr is None) == (name in compare.SECOND_ORDER)
        assert set(compare.default_optimizers(problem)) <= set(compare.OPTIMIZER_NAMES)
    assert set(compare.optimizers()) == set(compare.OPTIMIZER_NAMES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--problem", "nope"], "choose from quadratic, rosenbrock"),
        (["compare", "--optimizers", "sgd,lbfgs"], "choose from sgd, momentum"),
        (["compare", "--optimizers", "sgd,sgd"], "listed twice"),
        (["compare", "--start", "1,x"], "two numbers"),
        (["compare", "--start", "1,2,3"], "two numbers"),
        (["compare", "--lr", "-0.1"], "positive number"),
        (["compare", "--tol", "nan"], "positive number"),
        (["demo", "--restarts", "0"], "positive integer"),
        (["demo", "--steps", "ten"], "positive integer"),
        (["demo", "--hidden", "8,,"], "layer widths"),
        (["demo", "--seed", "-1"], "integer >= 0"),
        (["demo", "--bogus"], "unrecognized arguments"),
        (["frobnicate"], "choose from 'demo', 'compare', 'bench'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("jaxdescent")
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [[], ["demo"], ["compare"], ["bench"]])
def test_help_on_every_command(command, capsys):
    assert cli.main([*command, "--help"]) == 0
    assert "usage: jaxdescent" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_negative_start_is_not_taken_for_an_option():
    assert cli._join_negative_points(["--start", "-1.2,1", "--lr", "-3"]) == [
        "--start=-1.2,1",
        "--lr",
        "-3",
    ]


def test_bench_passes_options_through(tmp_path, monkeypatch):
    fake = tmp_path / "benchmarks"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "run.py").write_text(
        "CALLS = []\n\ndef main(argv=None):\n    CALLS.append(argv)\n    return 0\n"
    )
    for name in ("benchmarks", "benchmarks.run"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_find_benchmarks", lambda: tmp_path)
    try:
        assert cli.main(["bench", "--quick", "--cases", "1,2"]) == 0
        assert sys.modules["benchmarks.run"].CALLS == [["--quick", "--cases", "1,2"]]
    finally:  # the fake suite must not stay imported for later tests
        for name in ("benchmarks", "benchmarks.run"):
            sys.modules.pop(name, None)


def test_bench_without_the_suite_says_where_it_lives(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_find_benchmarks", lambda: None)
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "benchmarks/" in err and "python -m benchmarks" in err


def test_console_script_and_python_m(tmp_path, monkeypatch, capsys):
    """One real process, run from another folder: the installed entry point (else ``python -m
    jaxdescent``) exits 2 on an error, with one line on stderr and no traceback. ``python -m
    jaxdescent`` then runs in this process, its ``__main__`` run by runpy as Python runs it."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    script = Path(sys.executable).with_name("jaxdescent")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jaxdescent"]
    done = subprocess.run(
        [*command, "compare", "--problem", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "rosenbrock" in done.stderr
    assert "Traceback" not in done.stderr

    monkeypatch.setattr(sys, "argv", ["jaxdescent", "--version"])
    monkeypatch.delitem(sys.modules, "jaxdescent.__main__", raising=False)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("jaxdescent", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxdescent {jaxdescent.__version__}"


def test_the_command_keeps_compiled_programs_between_runs(tmp_path):
    """``enable_compilation_cache`` points JAX's persistent cache at JAXDESCENT_CACHE_DIR
    (``""`` turns it off); run in a subprocess, since it sets global JAX options."""
    folder = tmp_path / "xla"
    code = (
        "import os, sys, jax, jax.numpy as jnp\n"
        "from jaxdescent.cli import enable_compilation_cache\n"
        "os.environ['JAXDESCENT_CACHE_DIR'] = ''\n"
        "print(enable_compilation_cache(), jax.config.jax_compilation_cache_dir)\n"
        "os.environ['JAXDESCENT_CACHE_DIR'] = sys.argv[1]\n"
        "print(enable_compilation_cache(), jax.config.jax_compilation_cache_dir)\n"
        "print(jax.config.jax_persistent_cache_min_compile_time_secs)\n"
        "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((30, 30))).block_until_ready()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["None None", f"{folder} {folder}", "0.2"]
    assert folder.is_dir()
