"""jaxdescent.plotting: each function returns a Figure, draws into a given axes, saves."""

from __future__ import annotations

import builtins
import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import jaxdescent as jd  # noqa: E402
from jaxdescent import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _saves(fig, tmp_path, name="fig.png"):
    path = tmp_path / name
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 1000


def test_loss_curves_one_run_is_log_scaled(tmp_path):
    fig = plotting.loss_curves(jnp.exp(-jnp.arange(50.0) / 10), title="decay")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "decay"
    _saves(fig, tmp_path)


def test_loss_curves_stack_highlights_the_given_best_run():
    losses = np.tile(np.linspace(1.0, 0.5, 30), (6, 1)) * np.arange(1, 7)[:, None]
    losses[2, 20:] = np.nan  # a run that stopped early
    fig = plotting.loss_curves(losses, best=4, smooth=5)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["best of 6 (run 4)"]
    fig = plotting.loss_curves(losses)  # best=True: lowest last finite loss
    assert fig.axes[0].get_legend_handles_labels()[1] == ["best of 6 (run 0)"]
    with pytest.raises(ValueError, match="run index"):
        plotting.loss_curves(losses, best=6)


def test_loss_curves_named_runs_and_negative_losses_use_linear_axis():
    fig = plotting.loss_curves({"a": [1.0, -0.5, -1.0], "b": [2.0, 1.0, 0.0]})
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert ax.get_legend_handles_labels()[1] == ["a", "b"]


def test_loss_curves_rejects_bad_shapes():
    with pytest.raises(ValueError, match="steps"):
        plotting.loss_curves(np.zeros((2, 3, 4)))


def test_moving_average_keeps_nan_after_a_stop():
    values = np.array([1.0, 3.0, 5.0, np.nan])
    out = plotting._moving_average(values, 2)
    np.testing.assert_allclose(out[:3], [1.0, 2.0, 4.0])
    assert np.isnan(out[3])


def test_contour_paths_on_a_test_function(tmp_path):
    rosen = jd.problems.get("rosenbrock")
    path = np.array([[-1.2, 1.0], [-1.0, 0.9], [0.0, 0.0], [1.0, 1.0]])
    fig = plotting.contour_paths(rosen, {"gd": path, "newton": path[::2]}, title="paths")
    ax = fig.axes[0]
    assert ax.get_xlim() == rosen.domain[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["minimum", "gd", "newton"]
    _saves(fig, tmp_path)


def test_contour_paths_plain_function_frames_the_path():
    path = np.array([[0.0, 0.0], [3.0, -2.0], [np.nan, np.nan]])
    fig = plotting.contour_paths(lambda x: jnp.sum(x**2), path, levels=10)
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 0.0 and hi > 3.0
    with pytest.raises(ValueError, match=r"\(steps, 2\)"):
        plotting.contour_paths(lambda x: jnp.sum(x**2), np.zeros((4, 3)))


def test_contour_levels_are_dense_near_the_minimum():
    xx, yy = np.meshgrid(np.linspace(-2, 2, 50), np.linspace(-1, 3, 50))
    zz = np.asarray(jd.problems.rosenbrock(jnp.stack([xx, yy], -1)))
    levels = plotting._levels(zz, 20, log=True)
    assert np.all(np.diff(levels) > 0)
    assert np.sum(levels < 10) >= 5  # the valley floor gets contour lines
    assert len(plotting._levels(np.ones((3, 3)), 10, log=True)) == 3


def test_restart_histogram_counts_nonfinite_in_title(tmp_path):
    final = np.array([0.1, 0.12, 0.5, np.nan, np.inf, 0.11])
    fig = plotting.restart_histogram(final)
    ax = fig.axes[0]
    assert "2 non-finite" in ax.get_title()
    heights = [patch.get_height() for patch in ax.patches]
    assert sum(heights) == 4
    _saves(fig, tmp_path)
    fig = plotting.restart_histogram(np.geomspace(1e-6, 1.0, 20))
    assert fig.axes[0].get_xscale() == "log"


def test_hessian_spectrum_colours_negative_eigenvalues(tmp_path):
    h = jax.hessian(jd.problems.saddle)(jnp.zeros(2))
    eig = np.linalg.eigvalsh(np.asarray(h))
    fig = plotting.hessian_spectrum(eig)
    assert "1 negative, 1 positive of 2" in fig.axes[0].get_title()
    _saves(fig, tmp_path)
    fig = plotting.hessian_spectrum({"saddle": eig, "minimum": [1.0, 1e5]})
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["saddle\n(1 negative)", "minimum\n(0 negative)"]
    assert fig.axes[0].get_yscale() == "symlog"


def test_decision_boundary_binary_and_multiclass(tmp_path):
    x, y = jd.problems.two_moons(jax.random.key(0), n=40)
    model = jd.models.mlp([2, 4, 1])
    params = model.init(jax.random.key(1))
    fig = plotting.decision_boundary(model.apply, params, x, y, resolution=30, title="b")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # the plot and its colour bar
    _saves(fig, tmp_path)
    three = jd.models.mlp([2, 4, 3])
    fig = plotting.decision_boundary(
        three.apply, three.init(jax.random.key(2)), x, y, resolution=30
    )
    assert len(fig.axes) == 1
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plotting.decision_boundary(model.apply, params, np.zeros((5, 3)), np.zeros(5))


def test_draws_into_a_given_axes():
    fig, axes = plt.subplots(1, 2)
    assert plotting.loss_curves([3.0, 2.0, 1.0], ax=axes[0]) is fig
    assert plotting.restart_histogram([0.1, 0.2], ax=axes[1]) is fig


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    module = importlib.reload(plotting)  # importing the module itself needs no matplotlib
    with pytest.raises(ImportError, match=r"pip install 'jaxdescent\[plot\]'"):
        module.loss_curves([1.0, 0.5])
