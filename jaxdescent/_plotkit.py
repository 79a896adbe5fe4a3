"""The machinery behind :mod:`jaxdescent.plotting`: where legends go, smoothing, scales.

Nothing here imports matplotlib at import time, so ``import jaxdescent.plotting`` works
without it; the functions that draw import it when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

INSTALL_HINT = "jaxdescent.plotting needs matplotlib: pip install 'jaxdescent[plot]'"


def pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return plt


def axes_for(ax, figsize):
    """``(figure, axes)``: a new figure, or the figure that holds ``ax``."""
    if ax is not None:
        return ax.figure, ax
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def named(values: Any, kind: str) -> dict[str, np.ndarray]:
    """A mapping ``name -> array`` from a mapping, or one unnamed array."""
    if isinstance(values, Mapping):
        if not values:
            raise ValueError(f"{kind} must not be empty")
        return {str(k): np.asarray(v, dtype=float) for k, v in values.items()}
    return {"": np.asarray(values, dtype=float)}


# Where a legend may go inside the axes, in order of preference.
_SPOTS = (
    "upper right",
    "upper left",
    "lower left",
    "lower right",
    "center right",
    "center left",
    "upper center",
    "lower center",
)
# The share of the lines' length (plus the share of its own box over bars) a legend inside
# the axes may cover; beyond it, the legend goes outside.
_CROWDED = 0.01


def legend(ax: Any, handles: Any = None, labels: Any = None, **kwargs: Any) -> Any:
    """Add a legend to ``ax`` where it hides no marked point, else outside the axes.

    matplotlib's ``loc="best"`` weighs every artist alike and can still cover a marker. This
    tries the corners and edges of the axes and takes the first spot whose box covers no
    marker (a ``plot`` with markers, a ``scatter``) and the least of the lines and bars; when
    every spot inside covers a marker, or more than a few percent of the lines, the legend
    goes outside, to the right of the axes. Call it after everything is drawn.

    Args:
      ax: the axes.
      handles, labels: as for ``ax.legend`` (default: the labelled artists of ``ax``).
      **kwargs: passed on to ``ax.legend`` (``loc`` and ``bbox_to_anchor`` are chosen here).

    Returns:
      The :class:`matplotlib.legend.Legend`, or None when nothing is labelled.
    """
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    elif labels is None:
        labels = [h.get_label() for h in handles]
    if not labels:
        return None
    kwargs = {k: v for k, v in kwargs.items() if k not in ("loc", "bbox_to_anchor")}
    root = getattr(ax.figure, "figure", ax.figure)  # the whole figure, also from a subfigure
    root.draw_without_rendering()  # lay the figure out: positions are now final
    markers, radii, samples, bars = _obstacles(ax)
    best = None
    for loc in _SPOTS:
        box = ax.legend(handles, labels, loc=loc, **kwargs).get_window_extent()
        if _covers(box, markers, radii):
            continue
        covered = _line_share(box, samples) + _bar_share(box, bars)
        if best is None or covered < best[0]:
            best = (covered, loc)
        if covered == 0.0:
            break
    if best is not None and best[0] <= _CROWDED:
        return ax.legend(handles, labels, loc=best[1], **kwargs)
    return ax.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs
    )


def _marked_points(ax: Any) -> tuple[np.ndarray, np.ndarray]:
    """Display coordinates ``(n, 2)`` and radii ``(n,)`` (pixels) of the markers drawn in
    ``ax``: ``plot`` lines with a marker and ``scatter`` points, inside the axes."""
    from matplotlib.collections import PathCollection

    scale = ax.figure.dpi / 72.0
    points, radii = [np.zeros((0, 2))], [np.zeros(0)]
    for line in ax.lines:
        if not line.get_visible() or line.get_marker() in (None, "", " ", "None", "none"):
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), float))
        points.append(xy)
        size = 0.5 * line.get_markersize() + line.get_markeredgewidth()
        radii.append(np.full(len(xy), size * scale))
    for coll in ax.collections:
        if not isinstance(coll, PathCollection) or not coll.get_visible():
            continue
        offsets = np.asarray(coll.get_offsets(), float)
        if offsets.size == 0:
            continue
        xy = coll.get_offset_transform().transform(offsets)
        sizes = np.resize(np.sqrt(np.asarray(coll.get_sizes(), float)), len(xy))
        points.append(xy)
        radii.append(0.5 * sizes * scale)
    xy, r = np.concatenate(points), np.concatenate(radii)
    box = ax.bbox
    with np.errstate(invalid="ignore"):
        inside = (
            np.all(np.isfinite(xy), axis=1)
            & (xy[:, 0] >= box.x0)
            & (xy[:, 0] <= box.x1)
            & (xy[:, 1] >= box.y0)
            & (xy[:, 1] <= box.y1)
        )
    return xy[inside], r[inside]


def _obstacles(ax):
    """What a legend should not cover: markers (with radii), points along lines, and bars."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    markers, radii = _marked_points(ax)
    paths = [line.get_transform().transform(line.get_xydata()) for line in ax.lines]
    for coll in ax.collections:
        if isinstance(coll, LineCollection) and coll.get_visible():
            transform = coll.get_transform()
            paths += [transform.transform(seg) for seg in coll.get_segments() if len(seg)]
    samples = [_along(np.asarray(xy, float)) for xy in paths]
    samples = np.concatenate(samples) if samples else np.zeros((0, 2))
    bars = [p.get_window_extent() for p in ax.patches if isinstance(p, Rectangle)]
    return markers, radii, samples, bars


def _along(xy: np.ndarray, spacing: float = 4.0) -> np.ndarray:
    """Points every few pixels along a polyline in display coordinates (gaps at nan)."""
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    if len(xy) < 2:
        return xy
    step = xy[1:] - xy[:-1]
    counts = np.clip(np.ceil(np.hypot(step[:, 0], step[:, 1]) / spacing), 1, 500).astype(int)
    start = np.repeat(xy[:-1], counts, axis=0)
    first = np.repeat(np.cumsum(counts) - counts, counts)  # where each segment's run starts
    frac = (np.arange(counts.sum()) - first) / np.repeat(counts, counts)
    return np.concatenate([start + frac[:, None] * np.repeat(step, counts, axis=0), xy[-1:]])


def _covers(box, points: np.ndarray, radii: np.ndarray) -> bool:
    if len(points) == 0:
        return False
    x, y = points[:, 0], points[:, 1]
    return bool(
        np.any(
            (x + radii >= box.x0)
            & (x - radii <= box.x1)
            & (y + radii >= box.y0)
            & (y - radii <= box.y1)
        )
    )


def _line_share(box, samples: np.ndarray) -> float:
    if len(samples) == 0:
        return 0.0
    x, y = samples[:, 0], samples[:, 1]
    inside = (x >= box.x0) & (x <= box.x1) & (y >= box.y0) & (y <= box.y1)
    return float(np.mean(inside))


def _bar_share(box, bars) -> float:
    area = sum(
        max(0.0, min(box.x1, b.x1) - max(box.x0, b.x0))
        * max(0.0, min(box.y1, b.y1) - max(box.y0, b.y0))
        for b in bars
    )
    return area / max(box.width * box.height, 1e-9)


def opaque(handle: Any) -> Any:
    """A legend key for a faint line: the same colour, fully opaque."""
    from matplotlib.lines import Line2D

    if not isinstance(handle, Line2D):
        return handle
    if (handle.get_alpha() or 1.0) >= 0.9 and handle.get_linewidth() >= 1.0:
        return handle
    return Line2D([], [], color=handle.get_color(), lw=max(1.5, handle.get_linewidth()))


def scale_losses(ax, finite: np.ndarray, log: bool) -> None:
    if not log or finite.size == 0:
        return
    if finite.min() > 0:
        ax.set_yscale("log")
        return
    size = np.abs(finite)
    typical = float(np.median(size))
    if size.max() > 1e3 * max(typical, 1e-300):
        # a loss unbounded below: a symmetric-log axis keeps the early steps visible
        linthresh = 10.0 ** np.floor(np.log10(max(typical, 1e-300)))
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.yaxis.set_major_locator(symlog_ticks(linthresh, finite.min(), finite.max()))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` steps along the last axis; ``nan`` stays ``nan``.

    Inside a run each point is the mean of the finite losses within ``window // 2`` steps
    either side. Within that distance of the run's first or last step, where the centred
    window would be cut short, it is the value there of a straight line fitted by least
    squares to the ``window`` steps at that end (Savitzky and Golay's treatment of the ends):
    the curve neither lags the data nor ramps in from its first value.
    """
    values = np.asarray(values, dtype=float)
    flat = values.reshape(-1, values.shape[-1])
    ok = np.isfinite(flat)
    y = np.where(ok, flat, 0.0)
    size, half = flat.shape[-1], max(int(window) // 2, 1)

    def windowed(v):  # sum of v over [i - half, i + half], zero beyond the ends
        full = np.apply_along_axis(lambda r: np.convolve(r, np.ones(2 * half + 1)), -1, v)
        return full[..., half : half + size]

    with np.errstate(invalid="ignore", divide="ignore"):
        out = windowed(y) / windowed(ok.astype(float))
    ran = ok.any(axis=-1)
    first = np.argmax(ok, axis=-1)
    last = size - 1 - np.argmax(ok[:, ::-1], axis=-1)
    steps = np.arange(size)[None, :]
    for lo, near in (
        (first, steps < first[:, None] + half),
        (np.maximum(first, last - 2 * half), steps > last[:, None] - half),
    ):
        cols = lo[:, None] + np.arange(2 * half + 1)[None, :]
        inside = cols <= last[:, None]
        cols = np.minimum(cols, size - 1)
        w = np.take_along_axis(ok, cols, -1) & inside
        t = np.where(w, cols - lo[:, None], 0.0)
        v = np.where(w, np.take_along_axis(y, cols, -1), 0.0)
        s0, s1, s2 = w.sum(-1), t.sum(-1), (t * t).sum(-1)
        sy, sty = v.sum(-1), (t * v).sum(-1)
        det = s0 * s2 - s1**2
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(det > 0, (s0 * sty - s1 * sy) / det, 0.0)
            level = (sy - slope * s1) / s0
        fitted = level[:, None] + slope[:, None] * (steps - lo[:, None])
        out = np.where(near & ran[:, None], fitted, out)
    return np.where(ok, out, np.nan).reshape(values.shape)


def last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else np.nan


def grid(fn: Callable, xlim, ylim, resolution: int):
    import jax
    import jax.numpy as jnp

    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    xx, yy = np.meshgrid(xs, ys)
    points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=1), jnp.float32)
    values = np.asarray(jax.jit(jax.vmap(fn))(points), dtype=float).reshape(xx.shape)
    return xx, yy, values


def levels(values: np.ndarray, count: int, log: bool) -> np.ndarray:
    """Contour levels: evenly spaced, or dense near the minimum (quantiles of log height)."""
    finite = values[np.isfinite(values)]
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.array([lo - 1.0, lo, lo + 1.0])
    if not log:
        return np.linspace(lo, hi, count)
    # Heights above the grid minimum, log-transformed: equal steps in log height make the
    # floor of a valley (Rosenbrock) as visible as its steep walls.
    height = np.log10(finite - lo + 1e-6 * (hi - lo))
    marks = np.linspace(np.quantile(height, 0.002), np.quantile(height, 0.995), count)
    levels = lo + 10.0**marks - 1e-6 * (hi - lo)
    return np.unique(levels)


def symlog_ticks(linthresh: float, low: float, high: float) -> Any:
    """Ticks for a symmetric-log axis over ``[low, high]``: 0 and the decades from
    ``linthresh`` out, none inside the linear region (where matplotlib's default ticks crowd
    together), at most six a side (every second, fourth, ... decade when there are more)."""
    from matplotlib.ticker import FixedLocator

    ticks = [0.0]
    for sign, reach in ((1.0, high), (-1.0, -low)):
        if reach <= linthresh:
            continue
        first = round(float(np.log10(linthresh)))
        last = int(np.ceil(np.log10(reach)))
        decades = np.arange(first, last + 1)
        stride = int(np.ceil(decades.size / 6))
        decades = decades[(last - decades) % stride == 0]
        ticks += list(sign * 10.0 ** decades.astype(float))
    return FixedLocator(np.sort(ticks))
