"""jaxdescent.plotting: each function returns a Figure, draws into a given axes, saves."""

from __future__ import annotations

import builtins
import importlib
import itertools
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
from jaxdescent import _plotkit, plotting  # noqa: E402


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
    values = np.array([1.0, 3.0, 2.0, 9.0, 4.0, np.nan])
    out = _plotkit.moving_average(values, 2)
    np.testing.assert_allclose(out[1:4], [2.0, 14 / 3, 5.0])  # centred means of three
    assert np.isnan(out[5])


def test_moving_average_neither_lags_nor_ramps():
    """A trend comes through unchanged, ends included: no lag, no ramp from the first value."""
    steps = np.arange(300.0)
    ramp = 5.0 - 0.01 * steps
    ramp[250:] = np.nan  # a run that stopped
    out = _plotkit.moving_average(np.stack([ramp, 2 * ramp]), 50)
    np.testing.assert_allclose(out[0, :250], ramp[:250], rtol=1e-12)
    np.testing.assert_allclose(out[1, :250], 2 * ramp[:250], rtol=1e-12)
    assert np.all(np.isnan(out[:, 250:]))
    # noise is averaged away, at the ends too
    noisy = 1.0 + np.random.default_rng(0).normal(0.0, 0.1, 2000)
    smooth = _plotkit.moving_average(noisy, 50)
    assert (
        np.std(smooth - 1.0) < 0.03 and abs(smooth[0] - 1.0) < 0.1 and abs(smooth[-1] - 1.0) < 0.1
    )


def test_contour_paths_on_a_test_function(tmp_path):
    rosen = jd.problems.get("rosenbrock")
    path = np.array([[-1.2, 1.0], [-1.0, 0.9], [0.0, 0.0], [1.0, 1.0]])
    fig = plotting.contour_paths(rosen, {"gd": path, "newton": path[::2]}, title="paths")
    ax = fig.axes[0]
    assert ax.get_xlim() == rosen.domain[0]
    labels = ax.get_legend().get_texts()
    assert [t.get_text() for t in labels] == ["minimum", "gd", "newton", "start"]
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
    levels = _plotkit.levels(zz, 20, log=True)
    assert np.all(np.diff(levels) > 0)
    assert np.sum(levels < 10) >= 5  # the valley floor gets contour lines
    assert len(_plotkit.levels(np.ones((3, 3)), 10, log=True)) == 3


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


# --- every picture: legends hide no marked point, every axis is labelled ---------------------


def _markers(fig):
    """``(x, y, r)`` in display pixels of every marker drawn in ``fig``: the markers of
    ``plot`` lines and the points of ``scatter`` collections, where they lie inside their axes."""
    from matplotlib.collections import PathCollection

    found = []
    scale = fig.dpi / 72.0
    for ax in fig.axes:
        box = ax.get_window_extent()
        for line in ax.lines:
            if line.get_marker() in (None, "", " ", "None", "none"):
                continue
            xy = line.get_transform().transform(np.asarray(line.get_xydata(), float))
            found += [(x, y, 0.5 * line.get_markersize() * scale, box) for x, y in xy]
        for coll in ax.collections:
            if isinstance(coll, PathCollection) and len(coll.get_offsets()):
                xy = coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), float))
                radii = np.resize(0.5 * np.sqrt(coll.get_sizes()) * scale, len(xy))
                found += [(x, y, r, box) for (x, y), r in zip(xy, radii)]
    return [
        (x, y, r)
        for x, y, r, box in found
        if np.isfinite(x) and np.isfinite(y) and box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1
    ]


def _check_picture(fig):
    """No legend box covers a marker (of any axes of the figure); every axis has a label."""
    fig.canvas.draw()
    markers = _markers(fig)
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):  # a colour bar: its one long axis carries the label
            assert ax.get_ylabel() or ax.get_xlabel(), "colour bar without a label"
            continue
        assert ax.get_xlabel(), f"x axis without a label ({ax.get_title()!r})"
        assert ax.get_ylabel(), f"y axis without a label ({ax.get_title()!r})"
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent()
        hidden = [
            (x, y)
            for x, y, r in markers
            if box.x0 - r < x < box.x1 + r and box.y0 - r < y < box.y1 + r
        ]
        assert not hidden, f"the legend of {ax.get_title()!r} hides markers at {hidden[:3]}"


def _runs():
    rng = np.random.default_rng(0)
    steps = np.arange(400)
    stack = np.exp(-steps / rng.uniform(30, 300, (40, 1))) + rng.uniform(0.01, 0.3, (40, 1))
    stack = stack * (1 + 0.1 * rng.normal(size=stack.shape))
    return stack


def _pictures():
    """Every plot function, in the forms the command and the notebooks use."""
    stack = _runs()
    final = stack[:, -1]
    x, y = jd.problems.two_moons(jax.random.key(0), n=120, noise=0.2)
    mlp = jd.models.mlp([2, 4, 1])
    camel = jd.problems.get("six_hump_camel")
    start = np.array(camel.start)
    toward = np.array([-1.70, 0.80])
    path = start + np.linspace(0, 1, 30)[:, None] * (toward - start)
    eig = np.concatenate([-np.geomspace(1e-4, 0.2, 14), np.geomspace(1e-5, 0.9, 19)])
    newton = np.geomspace(24.0, 1e-20, 21)
    return {
        "one run": lambda: plotting.loss_curves(np.exp(-np.arange(50.0) / 10)),
        "stack": lambda: plotting.loss_curves(
            stack, best=3, groups={"stuck": final > 0.2}, smooth=25
        ),
        "named, different lengths": lambda: plotting.loss_curves(
            {"sgd": np.geomspace(24.0, 1e-3, 2000), "newton": newton}
        ),
        "unbounded": lambda: plotting.loss_curves(
            {"sgd": -np.geomspace(1.0, 1e150, 900), "adam": -np.linspace(1, 3000, 2000)}
        ),
        "camel paths": lambda: plotting.contour_paths(
            camel, {"sgd": path, "newton": path[::6]}, resolution=60
        ),
        "rosenbrock paths": lambda: plotting.contour_paths(
            jd.problems.get("rosenbrock"),
            {"gd": np.array([[-1.2, 1.0], [-1.0, 0.9], [1.0, 1.0]])},
            resolution=60,
        ),
        "plain function": lambda: plotting.contour_paths(
            lambda p: jnp.sum(p**2), {"a": path, "b": path[::-1] * 0.5}, resolution=40
        ),
        "histogram": lambda: plotting.restart_histogram(final, threshold=0.2),
        "spectrum": lambda: plotting.hessian_spectrum(eig),
        "spectra": lambda: plotting.hessian_spectrum({"start": eig, "end": np.abs(eig)}),
        "boundary": lambda: plotting.decision_boundary(
            mlp.apply, mlp.init(jax.random.key(1)), x, y, resolution=40
        ),
        "boundary, 3 classes": lambda: plotting.decision_boundary(
            jd.models.mlp([2, 4, 3]).apply,
            jd.models.mlp([2, 4, 3]).init(jax.random.key(2)),
            x,
            y,
            resolution=40,
        ),
    }


@pytest.mark.parametrize("name", list(_pictures()))
def test_legends_hide_no_marker_and_every_axis_is_labelled(name):
    _check_picture(_pictures()[name]())


def test_the_checks_can_fail():
    """The checker above sees a legend over a marker, and a missing label."""
    fig, ax = plt.subplots()
    ax.plot([0.85], [0.95], "o", label="a point in the corner")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="x", ylabel="y")
    ax.legend(loc="upper right")
    with pytest.raises(AssertionError, match="hides markers"):
        _check_picture(fig)
    ax.set_ylabel("")
    ax.get_legend().remove()
    with pytest.raises(AssertionError, match="y axis without a label"):
        _check_picture(fig)


def test_legend_avoids_markers_and_goes_outside_when_the_axes_are_full():
    fig, ax = plt.subplots()
    ax.plot([0.95], [0.95], "*", markersize=14, label="minimum")  # the upper right corner
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="x", ylabel="y")
    legend = plotting.legend(ax)
    _check_picture(fig)
    assert legend.get_window_extent().x1 < ax.get_window_extent().x1  # inside, elsewhere
    fig, ax = plt.subplots()
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 25), np.linspace(0, 1, 25)), -1).reshape(-1, 2)
    ax.scatter(grid[:, 0], grid[:, 1], label="everywhere")
    ax.set(xlabel="x", ylabel="y")
    legend = plotting.legend(ax)
    _check_picture(fig)
    assert legend.get_window_extent().x0 > ax.get_window_extent().x1  # outside, to the right
    assert plotting.legend(plt.subplots()[1]) is None  # nothing labelled


def test_camel_legend_leaves_the_global_minimum_visible():
    """The picture of ``jaxdescent compare --problem six_hump_camel``."""
    camel = jd.problems.get("six_hump_camel")
    fig = plotting.contour_paths(camel, {"newton": np.array([camel.start, [-1.7, 0.8]])})
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent()
    x, y = ax.transData.transform((0.0898, -0.7127))
    assert not (box.x0 - 10 < x < box.x1 + 10 and box.y0 - 10 < y < box.y1 + 10)


def test_loss_curves_log_step_axis_when_run_lengths_differ():
    curves = {"sgd": np.geomspace(24.0, 1e-3, 2000), "newton": np.geomspace(24.0, 1e-20, 21)}
    ax = plotting.loss_curves(curves).axes[0]
    assert ax.get_xscale() == "symlog" and "log" in ax.get_xlabel()
    padded = np.full(2000, np.nan)
    padded[:21] = curves["newton"]  # as fit returns it: nan after the run stopped
    assert plotting.loss_curves({**curves, "newton": padded}).axes[0].get_xscale() == "symlog"
    assert plotting.loss_curves(curves, log_steps=False).axes[0].get_xscale() == "linear"
    same = {"a": curves["sgd"], "b": curves["sgd"][:500]}
    assert plotting.loss_curves(same).axes[0].get_xscale() == "linear"


def test_loss_curves_unbounded_below_uses_symlog():
    curves = {"sgd": -np.geomspace(1.0, 1e150, 900), "adam": -np.linspace(1, 3000, 2000)}
    assert plotting.loss_curves(curves).axes[0].get_yscale() == "symlog"
    bounded = {"a": np.linspace(1.0, -1.0, 50), "b": np.linspace(1.0, 0.0, 50)}
    assert plotting.loss_curves(bounded).axes[0].get_yscale() == "linear"


def test_loss_curves_groups_colour_runs_and_count_them():
    from matplotlib.colors import to_rgba

    stack = _runs()
    stuck = stack[:, -1] > 0.2
    ax = plotting.loss_curves(stack, groups={"stuck": stuck}, best=0).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        f"other runs ({int((~stuck).sum())})",
        f"stuck ({int(stuck.sum())})",
        "best of 40 (run 0)",
    ]
    red = [line for line in ax.lines if to_rgba(line.get_color())[:3] == to_rgba("tab:red")[:3]]
    assert len(red) == int(stuck.sum())
    with pytest.raises(ValueError, match="mask of shape"):
        plotting.loss_curves(stack, groups={"stuck": stuck[:5]})
    with pytest.raises(ValueError, match="one stack"):
        plotting.loss_curves({"a": stack}, groups={"stuck": stuck})


def test_restart_histogram_threshold_splits_the_bars():
    final = np.array([0.1, 0.11, 0.12, 0.13, 0.5, 0.52, 0.9])
    ax = plotting.restart_histogram(final, threshold=0.3, threshold_label="stuck").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[-1] == "stuck = 0.3: 3 above"
    red = [p for p in ax.patches if p.get_facecolor()[0] > 0.8 and p.get_facecolor()[2] < 0.3]
    assert sum(p.get_height() for p in red) == 3
    assert sum(p.get_height() for p in ax.patches) == 7


def test_hessian_spectrum_symlog_tick_labels_do_not_overlap():
    eig = np.concatenate([-np.geomspace(1.3e-4, 0.17, 14), np.geomspace(1e-5, 0.86, 19)])
    fig = plotting.hessian_spectrum({"initialisation": eig, "after training": eig / 3})
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog" and ax.get_title()
    fig.canvas.draw()
    boxes = sorted(
        (t.get_window_extent() for t in ax.get_yticklabels() if t.get_text()),
        key=lambda b: b.y0,
    )
    assert len(boxes) >= 5
    for low, high in itertools.pairwise(boxes):
        assert low.y1 <= high.y0, "overlapping tick labels"
