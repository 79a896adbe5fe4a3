"""Pictures of optimisation runs, with matplotlib (an optional extra).

Each function draws one kind of figure and returns the :class:`matplotlib.figure.Figure`.
Pass ``ax=`` to draw into an existing axes instead (the figure returned is then that axes'
figure). matplotlib is imported only when a function here is called; install it with
``pip install 'jaxdescent[plot]'``.

- :func:`loss_curves`: loss against step, for one run, several named runs or a stack of
  restarts (log scale, best run highlighted);
- :func:`contour_paths`: optimiser paths drawn over the contour lines of a 2-D function;
- :func:`restart_histogram`: the distribution of final losses over random restarts;
- :func:`hessian_spectrum`: the Hessian's eigenvalues, negative ones (descent directions of a
  saddle) in a different colour from positive ones;
- :func:`decision_boundary`: a 2-D classifier's probability surface and its 0.5 contour over
  the data;
- :func:`legend`: a legend placed where it hides no marked point (every function here uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxdescent import _plotkit as kit
from jaxdescent._plotkit import legend

__all__ = [
    "contour_paths",
    "decision_boundary",
    "hessian_spectrum",
    "legend",
    "loss_curves",
    "restart_histogram",
]


def loss_curves(
    losses: Any,
    *,
    ax: Any = None,
    log: bool = True,
    log_steps: bool | None = None,
    best: bool | int = True,
    groups: Mapping[str, Any] | None = None,
    smooth: int | None = None,
    max_lines: int = 256,
    title: str | None = None,
    xlabel: str = "step",
    ylabel: str = "loss",
) -> Any:
    """Loss against step.

    Args:
      losses: one run ``(steps,)``; a stack of runs ``(runs, steps)`` such as
        ``multistart(...).losses`` (drawn thin and translucent, the run with the lowest final
        loss drawn bold when ``best``); or a mapping ``name -> (steps,)`` for a legend.
        ``nan`` entries (steps after a run stopped) are left blank.
      ax: axes to draw into (default: a new figure).
      log: logarithmic loss axis; when some loss is <= 0, a symmetric-log axis if the
        largest magnitude is over 1,000 times the median one (a run falling off an unbounded
        loss), else linear.
      log_steps: a logarithmic step axis (symmetric-log, linear from step 0 to 1). Default:
        when named runs stop after step counts that differ tenfold or more, so that a run of
        20 steps is not squeezed against the axis by one of 2,000.
      best: highlight the best run of a stack: ``True`` for the one with the lowest last
        finite loss, or the index of the run to highlight (e.g.
        ``multistart(...).best_index``, chosen on the whole data rather than a batch).
      groups: for a stack, a mapping ``name -> runs`` (a boolean mask over the runs, or their
        indices), each group drawn in its own colour with a legend entry counting its runs
        (e.g. ``{"stuck": final_losses > threshold}``); the other runs stay blue.
      smooth: draw a centred moving average over this many steps (for noisy mini-batch
        losses); near the ends of a run, a straight line fitted to the steps there, so the
        curve neither lags nor ramps in from its first value.
      max_lines: draw at most this many runs of a stack per group (evenly chosen, plus the
        best).
      title, xlabel, ylabel: labels.

    Returns:
      The matplotlib figure.
    """
    series = kit.named(losses, "losses")
    if groups is not None and (len(series) != 1 or next(iter(series)) != ""):
        raise ValueError("groups needs one stack of runs (runs, steps), not a mapping of runs")
    fig, ax = kit.axes_for(ax, (6.4, 4.0))
    finite_all, lengths = [], []
    for k, (name, values) in enumerate(series.items()):
        if values.ndim == 0 or values.ndim > 2:
            raise ValueError(
                f"losses must have shape (steps,) or (runs, steps); got {values.shape}"
            )
        if smooth is not None and smooth > 1:
            values = kit.moving_average(values, int(smooth))
        finite_all.append(values[np.isfinite(values)])
        ran = np.flatnonzero(np.any(np.isfinite(values.reshape(-1, values.shape[-1])), axis=0))
        lengths.append(int(ran[-1]) + 1 if ran.size else 0)
        steps = np.arange(values.shape[-1])
        if values.ndim == 1:
            ax.plot(steps, values, label=name or None, lw=1.5)
            continue
        _stack(ax, steps, values, name, f"C{k}", best, groups, max_lines)
    kit.scale_losses(ax, np.concatenate(finite_all), log)
    if log_steps is None:
        ran = [n for n in lengths if n > 1]
        log_steps = len(ran) > 1 and max(ran) >= 10 * min(ran)
    if log_steps:
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
        ax.set_xlim(0, max(max(lengths), 2))
    ax.set_xlabel(xlabel + (" (log scale)" if log_steps else ""))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    legend(ax, [kit.opaque(h) for h in handles], labels, frameon=False)
    return fig


# colours of the groups of a stack of runs (the others are blue, the best black)
_GROUP_COLOURS = ("tab:red", "tab:orange", "tab:purple", "tab:green", "tab:brown")


def _stack(ax, steps, values, name, color, best, groups, max_lines):
    """Draw a stack of runs ``(runs, steps)``: translucent lines, groups, the best in bold."""
    runs = values.shape[0]
    alpha = max(0.08, min(0.6, 8 / runs))
    members = np.zeros(runs, bool)
    named = []
    for g, (label, which) in enumerate((groups or {}).items()):
        chosen = np.zeros(runs, bool)
        which = np.asarray(which)
        if which.dtype == bool:
            if which.shape != (runs,):
                raise ValueError(
                    f"groups[{label!r}] must be a mask of shape ({runs},); got {which.shape}"
                )
            chosen |= which
        else:
            chosen[which.astype(int).ravel()] = True
        chosen &= ~members
        members |= chosen
        colour = _GROUP_COLOURS[g % len(_GROUP_COLOURS)]
        named.append((f"{label} ({int(chosen.sum())})", np.flatnonzero(chosen), colour))
    rest = np.flatnonzero(~members)
    rest_label = name or (f"other runs ({rest.size})" if groups else None)
    for label, idx, c in [(rest_label, rest, color), *named]:
        if idx.size == 0:
            continue
        pick = idx[np.unique(np.linspace(0, idx.size - 1, min(idx.size, max_lines)).astype(int))]
        lines = ax.plot(steps, values[pick].T, lw=0.6, alpha=alpha if c == color else 0.6, color=c)
        if label:
            lines[0].set_label(label)
    i = None
    if best is True:
        last = np.array([kit.last_finite(v) for v in values])
        if np.any(np.isfinite(last)):
            i = int(np.nanargmin(last))
    elif best is not False and best is not None:
        i = int(best)
        if not 0 <= i < runs:
            raise ValueError(f"best must be a run index in [0, {runs}); got {best}")
    if i is not None:
        label = f"{name} best (run {i})" if name else f"best of {runs} (run {i})"
        ax.plot(steps, values[i], color="black" if not name else color, lw=1.8, label=label)


def contour_paths(
    fn: Callable,
    paths: Any = None,
    *,
    xlim: Sequence[float] | None = None,
    ylim: Sequence[float] | None = None,
    levels: int = 30,
    log_levels: bool = True,
    critical_points: Any = None,
    resolution: int = 200,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Optimiser paths over the contour lines of a function of two variables.

    Args:
      fn: ``fn(x) -> scalar`` for ``x`` of shape ``(2,)``, or a
        :class:`jaxdescent.problems.TestFunction`, whose ``domain`` and ``critical_points``
        are then used by default.
      paths: an array of points ``(steps, 2)``, or a mapping ``name -> (steps, 2)`` (one
        coloured line each, with a legend). Non-finite points are dropped.
      xlim, ylim: the plotted region (default: the test function's domain, else a box
        around the paths).
      levels: number of contour levels.
      log_levels: space the levels logarithmically above the minimum on the grid, which
        shows valleys such as Rosenbrock's.
      critical_points: ``((point, kind), ...)`` to mark (minima as stars, saddles as
        crosses, maxima as triangles).
      resolution: grid points per axis.
      ax: axes to draw into (default: a new figure).

    Returns:
      The matplotlib figure.
    """
    domain = getattr(fn, "domain", None)
    if critical_points is None:
        critical_points = getattr(fn, "critical_points", ())
    series = {} if paths is None else kit.named(paths, "paths")
    for name, path in series.items():
        if path.ndim != 2 or path.shape[1] != 2:
            raise ValueError(
                f"each path must have shape (steps, 2); got {path.shape}"
                + (f" for {name!r}" if name else "")
            )
    if xlim is None or ylim is None:
        if domain is not None:
            box = domain
        else:
            pts = [p[np.all(np.isfinite(p), axis=1)] for p in series.values()]
            pts = np.concatenate(pts) if pts else np.zeros((0, 2))
            if len(pts) == 0:
                box = ((-2.0, 2.0), (-2.0, 2.0))
            else:
                lo, hi = pts.min(axis=0), pts.max(axis=0)
                pad = np.maximum(0.15 * (hi - lo), 0.5)
                box = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
        xlim = box[0] if xlim is None else xlim
        ylim = box[1] if ylim is None else ylim
    xx, yy, zz = kit.grid(fn, xlim, ylim, resolution)
    fig, ax = kit.axes_for(ax, (6.4, 5.0))
    level_values = kit.levels(zz, levels, log_levels)
    ax.contourf(xx, yy, zz, levels=level_values, cmap="Greys_r", alpha=0.35, extend="both")
    ax.contour(xx, yy, zz, levels=level_values, colors="0.35", linewidths=0.5)
    markers = {
        "minimum": ("*", 14),
        "maximum": ("^", 9),
        "saddle": ("X", 9),
        "degenerate": ("D", 7),
    }
    shown = set()
    for point, kind in critical_points:
        if not (xlim[0] <= point[0] <= xlim[1] and ylim[0] <= point[1] <= ylim[1]):
            continue  # outside the picture: no legend entry for it either
        marker, size = markers.get(kind, ("o", 7))
        ax.plot(
            point[0],
            point[1],
            marker,
            color="gold" if kind == "minimum" else "white",
            markersize=size,
            markeredgecolor="black",
            label=None if kind in shown else kind,
            linestyle="none",
            zorder=4,
        )
        shown.add(kind)
    starts = []
    for name, path in series.items():
        path = path[np.all(np.isfinite(path), axis=1)]
        if len(path) == 0:
            continue
        dots = len(path) <= 150
        (line,) = ax.plot(
            path[:, 0],
            path[:, 1],
            "-",
            lw=1.3,
            marker="." if dots else None,
            markersize=4,
            label=name or None,
            zorder=3,
        )
        starts.append((path[0], line.get_color()))
    same = len({tuple(np.round(p, 12)) for p, _ in starts}) == 1
    for k, (point, color) in enumerate(starts):
        ax.plot(
            point[0],
            point[1],
            "o",
            color="white" if same else color,
            markersize=7,
            markeredgecolor="black",
            linestyle="none",
            label="start" if k == 0 and same else None,
            zorder=5,
        )
    handles, labels = ax.get_legend_handles_labels()
    if len(starts) > 1 and not same:  # one key for the starts, each in its path's colour
        from matplotlib.lines import Line2D

        handles.append(
            Line2D([], [], marker="o", color="white", markeredgecolor="black", linestyle="none")
        )
        labels.append("starts")
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
    legend(ax, handles, labels, fontsize="small", framealpha=0.85)
    return fig


def restart_histogram(
    final_losses: Any,
    *,
    bins: int = 30,
    log: bool | None = None,
    threshold: float | None = None,
    threshold_label: str = "threshold",
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Histogram of the final losses of many restarts (``multistart(...).final_losses``).

    Non-finite losses (diverged restarts) are counted in the title instead of drawn; the best
    and the median are marked.

    Args:
      final_losses: one loss per restart, shape ``(restarts,)``.
      bins: number of bins.
      log: logarithmic loss axis (default: when the losses are positive and span more than
        two decades).
      threshold: draw this loss as a line, and the restarts above it in red (e.g. the loss
        above which a restart counts as stuck); the legend counts them.
      threshold_label: what the threshold means, for the legend.
      ax: axes to draw into (default: a new figure).

    Returns:
      The matplotlib figure.
    """
    values = np.asarray(final_losses, dtype=float).ravel()
    finite = values[np.isfinite(values)]
    fig, ax = kit.axes_for(ax, (6.4, 4.0))
    if finite.size:
        if log is None:
            log = bool(finite.min() > 0 and finite.max() / finite.min() > 100)
        lo, hi = finite.min(), finite.max() * (1 + 1e-9) + 1e-12
        if log and finite.min() > 0:
            edges = np.geomspace(lo, hi, bins + 1)
            ax.set_xscale("log")
        else:
            edges = np.linspace(lo, hi, bins + 1)
        if threshold is not None and lo < threshold < hi:
            edges = np.unique(np.append(edges, threshold))  # no bin straddles the threshold
        above = finite > threshold if threshold is not None else np.zeros(finite.shape, bool)
        ax.hist(
            [finite[~above], finite[above]],
            bins=edges,
            color=["tab:blue", "tab:red"],
            alpha=0.8,
            edgecolor="white",
            stacked=True,
        )
        ax.axvline(finite.min(), color="black", lw=1.2, label=f"best {finite.min():.4g}")
        ax.axvline(
            np.median(finite),
            color="0.35",
            lw=1.2,
            ls="--",
            label=f"median {np.median(finite):.4g}",
        )
        if threshold is not None:
            ax.axvline(
                threshold,
                color="tab:red",
                lw=1.2,
                ls=":",
                label=f"{threshold_label} = {threshold:.4g}: {int(above.sum())} above",
            )
    ax.set_xlabel("final loss")
    ax.set_ylabel("restarts")
    bad = values.size - finite.size
    text = title or f"final loss of {values.size} restarts"
    if bad:
        text += f" ({bad} non-finite, not shown)"
    ax.set_title(text)
    ax.grid(alpha=0.3)
    legend(ax, frameon=False)
    return fig


def hessian_spectrum(
    eigenvalues: Any,
    *,
    ax: Any = None,
    title: str | None = None,
    symlog: bool | None = None,
) -> Any:
    """The eigenvalues of a Hessian, sorted, negative ones in red and positive in blue.

    At a critical point, all positive means a minimum, all negative a maximum, and both
    signs a saddle, whose negative-eigenvalue directions lead downhill.

    Args:
      eigenvalues: shape ``(d,)`` (e.g. ``jd.diagnostics.hessian_spectrum(...)``), or a
        mapping ``name -> (d,)`` to compare several points side by side.
      ax: axes to draw into (default: a new figure).
      symlog: symmetric-log value axis (default: when the magnitudes span more than three
        decades), linear for magnitudes below ``1e-4`` times the largest.

    Returns:
      The matplotlib figure.
    """
    series = kit.named(eigenvalues, "eigenvalues")
    fig, ax = kit.axes_for(ax, (6.4, 4.0))
    offset = 0
    ticks, tick_labels = [], []
    largest, smallest = 0.0, np.inf
    for name, values in series.items():
        values = np.sort(np.ravel(values))
        idx = offset + np.arange(values.size)
        colors = np.where(values < 0, "tab:red", np.where(values > 0, "tab:blue", "0.5"))
        ax.vlines(idx, 0, values, colors=colors, lw=2 if values.size <= 60 else 1)
        ax.scatter(idx, values, c=colors, s=18 if values.size <= 60 else 4, zorder=3)
        if name:
            ticks.append(offset + (values.size - 1) / 2)
            neg = int(np.sum(values < 0))
            tick_labels.append(f"{name}\n({neg} negative)")
        nonzero = np.abs(values[values != 0])
        if nonzero.size:
            largest = max(largest, float(nonzero.max()))
            smallest = min(smallest, float(nonzero.min()))
        offset += values.size + 1
    ax.axhline(0.0, color="black", lw=0.8)
    if symlog is None:
        symlog = bool(np.isfinite(smallest) and largest / smallest > 1e3)
    if symlog and largest > 0:
        # Linear within 1e-4 of the largest magnitude: four decades either side stay legible.
        linthresh = 10.0 ** np.floor(np.log10(max(smallest, largest * 1e-4)))
        ax.set_yscale("symlog", linthresh=linthresh)
        low = min(float(np.min(v)) for v in series.values())
        high = max(float(np.max(v)) for v in series.values())
        ax.yaxis.set_major_locator(kit.symlog_ticks(linthresh, low, high))
        # room for the markers at the ends: a fifth of a decade beyond the extreme values
        ax.set_ylim(
            low * 1.6 if low < -linthresh else -linthresh,
            high * 1.6 if high > linthresh else linthresh,
        )
    if ticks:
        ax.set_xticks(ticks, tick_labels)
        ax.set_xlabel("eigenvalues in ascending order, at each point")
    else:
        ax.set_xlabel("eigenvalue index (ascending)")
    ax.set_ylabel("eigenvalue")
    every = np.concatenate([np.ravel(v) for v in series.values()])
    if title is None and len(series) == 1:
        title = (
            f"Hessian spectrum: {int(np.sum(every < 0))} negative, "
            f"{int(np.sum(every > 0))} positive of {every.size}"
        )
    elif title is None:
        title = f"Hessian spectra at {len(series)} points"
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    from matplotlib.lines import Line2D

    kinds = [("negative", every < 0, "tab:red"), ("positive", every > 0, "tab:blue")]
    kinds.append(("zero", every == 0, "0.5"))
    handles = [
        Line2D([], [], marker="o", color=c, markersize=5, linestyle="none")
        for _, mask, c in kinds
        if mask.any()
    ]
    legend(ax, handles, [k for k, mask, _ in kinds if mask.any()], fontsize="small")
    return fig


def decision_boundary(
    apply: Callable,
    params: Any,
    x: Any,
    y: Any,
    *,
    probs: Callable | None = None,
    resolution: int = 200,
    margin: float = 0.5,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """A binary classifier's probability over the plane, its 0.5 contour, and the data.

    Args:
      apply: ``apply(params, x) -> logits`` of shape ``(n,)`` or ``(n, 1)``, e.g.
        ``model.apply``; with ``(n, k)`` logits for ``k > 2`` classes the regions of the most
        likely class are drawn instead.
      params: the parameters to draw (e.g. ``multistart(...).best_params``).
      x: inputs ``(n, 2)``.
      y: labels ``(n,)``.
      probs: maps the output to ``p(y=1)``; default the sigmoid (for Bernoulli logits).
      resolution: grid points per axis.
      margin: space around the data.
      ax: axes to draw into (default: a new figure).

    Returns:
      The matplotlib figure.
    """
    import jax
    import jax.numpy as jnp

    x = np.asarray(x, dtype=float)
    y = np.asarray(y).ravel()
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"decision_boundary draws 2-D inputs: x must be (n, 2); got {x.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have one label per row of x ({x.shape[0]}); got {y.shape}")
    lo, hi = x.min(axis=0) - margin, x.max(axis=0) + margin
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    xx, yy = np.meshgrid(xs, ys)
    grid = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=1), jnp.float32)
    out = np.asarray(jax.jit(apply)(params, grid), dtype=float)
    fig, ax = kit.axes_for(ax, (5.6, 5.0))
    if out.ndim == 2 and out.shape[1] > 2:
        classes = out.argmax(axis=1).reshape(xx.shape)
        ax.contourf(
            xx, yy, classes, levels=np.arange(out.shape[1] + 1) - 0.5, cmap="tab10", alpha=0.3
        )
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="tab10", s=14, edgecolors="black", linewidths=0.3)
    else:
        out = out.reshape(-1) if out.ndim == 1 or out.shape[1] == 1 else out[:, 1] - out[:, 0]
        # The logistic function through tanh, which cannot overflow.
        p = 0.5 * (1.0 + np.tanh(0.5 * out)) if probs is None else np.asarray(probs(out), float)
        p = p.reshape(xx.shape)
        filled = ax.contourf(xx, yy, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
        ax.contour(xx, yy, p, levels=[0.5], colors="black", linewidths=1.5)
        fig.colorbar(filled, ax=ax, label="p(y = 1 | x)")
        for label, color in ((0, "tab:blue"), (1, "tab:red")):
            sel = y == label
            ax.scatter(
                x[sel, 0],
                x[sel, 1],
                s=14,
                color=color,
                edgecolors="black",
                linewidths=0.3,
                label=f"y = {label}",
            )
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
    legend(ax, fontsize="small", framealpha=0.85)
    return fig
