r"""Test problems: classic functions with known critical points, and small synthetic data sets.

The functions take a flat vector ``x`` and return a scalar, so they go straight into
:func:`jaxdescent.fit` (``jd.fit(jd.problems.rosenbrock, jnp.array([-1.2, 1.0]), opt, ...)``).
They also accept a batch of points ``x`` of shape ``(..., d)`` and return shape ``(...)``,
which is handy for contour plots. Every function keeps the dtype of ``x``.

:data:`CATALOGUE` maps each name to a :class:`TestFunction`: the function, its critical
points (each with its kind: ``'minimum'``, ``'maximum'``, ``'saddle'`` or ``'degenerate'``),
a plotting domain and a standard starting point. The points come from a dense search for
stationary points in float64, to 12 digits.

The data sets each take a PRNG ``key`` and return ``(x, y)`` as float32 arrays, ``x`` of
shape ``(n, d)`` and ``y`` of shape ``(n,)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdescent._checks import check_int, check_nonnegative, check_real, check_unit_interval

__all__ = [
    "CATALOGUE",
    "TestFunction",
    "beale",
    "get",
    "himmelblau",
    "linearly_separable",
    "make_quadratic",
    "monkey_saddle",
    "quadratic",
    "rastrigin",
    "regression_with_outliers",
    "rosenbrock",
    "saddle",
    "saddle_quartic",
    "six_hump_camel",
    "two_moons",
]

KINDS = ("minimum", "maximum", "saddle", "degenerate")


@dataclasses.dataclass(frozen=True)
class TestFunction:
    """A catalogue entry; calling it calls ``fn``, so it can be passed to ``fit`` as the loss.

    Attributes:
      fn: ``fn(x) -> scalar`` for ``x`` of shape ``(2,)`` (or a batch ``(..., 2)``).
      critical_points: ``((point, kind), ...)`` with ``point`` a tuple of floats and ``kind``
        one of ``'minimum'``, ``'maximum'``, ``'saddle'``, ``'degenerate'``.
      domain: ``((xmin, xmax), (ymin, ymax))``, a region for plots.
      start: a standard starting point, as a tuple of floats.
    """

    __test__ = False  # not a pytest test class, despite the name

    fn: Callable[[jax.Array], jax.Array]
    critical_points: tuple[tuple[tuple[float, ...], str], ...]
    domain: tuple[tuple[float, float], tuple[float, float]]
    start: tuple[float, ...]

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        return self.fn(x)


def _as_float(
    x: jax.typing.ArrayLike, name: str = "x", dim: int | None = None, min_dim: int = 1
) -> jax.Array:
    """``x`` as a float array of points: shape ``(d,)`` or ``(..., d)``, checked (shapes are
    static, so this runs once when traced) so that no coordinate is silently ignored."""
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[-1] < min_dim or (dim is not None and x.shape[-1] != dim):
        want = f"d >= {min_dim}" if dim is None else f"d = {dim}"
        raise ValueError(
            f"{name} takes points x of shape (d,) or (..., d) with {want}; got {x.shape}"
        )
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def make_quadratic(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike, c: float = 0.0):
    r"""The quadratic ``f(x) = 1/2 x^T A x - b^T x + c``.

    Its gradient is ``A_s x - b`` and its Hessian ``A_s = (A + A^T) / 2`` everywhere; with
    ``A`` positive definite the unique minimiser is ``A_s^{-1} b``, which Newton's method
    reaches in one step from anywhere.

    Args:
      a: square matrix ``(d, d)``.
      b: vector ``(d,)``.
      c: constant offset.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> f = jd.problems.make_quadratic([[2.0, 0.0], [0.0, 4.0]], [2.0, 4.0])
      >>> float(f(jnp.array([1.0, 1.0])))                # the minimum, -1/2 b^T A^-1 b
      -3.0
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a must be a square matrix; got shape {a.shape}")
    if b.shape != (a.shape[0],):
        raise ValueError(f"b must have shape ({a.shape[0]},) to match a; got {b.shape}")
    check_real("c", c)
    a_sym = 0.5 * (a + a.T)

    def quadratic(x):
        x = _as_float(x, "quadratic", dim=a.shape[0])
        am, bv = jnp.asarray(a_sym, x.dtype), jnp.asarray(b, x.dtype)
        return 0.5 * jnp.einsum("...i,ij,...j->...", x, am, x) - x @ bv + c

    return quadratic


_Q_A = [[3.0, 1.0], [1.0, 1.0]]
_Q_B = [2.0, 0.0]  # = A (1, -1)

quadratic = make_quadratic(_Q_A, _Q_B)
quadratic.__doc__ = """``1/2 x^T A x - b^T x`` with ``A = [[3, 1], [1, 1]]``, ``b = (2, 0)``.

Minimum ``-1`` at ``(1, -1)``; the Hessian's eigenvalues ``2 -+ sqrt(2)`` give condition
number about 5.8, so gradient descent zig-zags a little.
"""


def rosenbrock(x: jax.typing.ArrayLike) -> jax.Array:
    r"""Rosenbrock's banana function, in any dimension ``d >= 2``.

    .. math:: f(x) = \sum_{i=1}^{d-1} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2

    Minimum 0 at ``(1, ..., 1)``, at the end of a long curved valley; the standard start is
    ``(-1.2, 1)``.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> round(float(jd.problems.rosenbrock(jnp.array([-1.2, 1.0]))), 4)
      24.2
    """
    x = _as_float(x, "rosenbrock", min_dim=2)
    head, tail = x[..., :-1], x[..., 1:]
    return jnp.sum(100.0 * (tail - head**2) ** 2 + (1.0 - head) ** 2, axis=-1)


def himmelblau(x: jax.typing.ArrayLike) -> jax.Array:
    r"""Himmelblau's function ``(x^2 + y - 11)^2 + (x + y^2 - 7)^2``.

    Four minima of value 0 (one at ``(3, 2)``), one maximum and four saddle points.
    """
    x = _as_float(x, "himmelblau", dim=2)
    u, v = x[..., 0], x[..., 1]
    return (u**2 + v - 11.0) ** 2 + (u + v**2 - 7.0) ** 2


def saddle(x: jax.typing.ArrayLike) -> jax.Array:
    r"""The saddle ``x^2 - y^2``: a saddle point of index 1 at the origin, unbounded below."""
    x = _as_float(x, "saddle", dim=2)
    return x[..., 0] ** 2 - x[..., 1] ** 2


def saddle_quartic(x: jax.typing.ArrayLike) -> jax.Array:
    r"""The saddle ``x^2 - y^2`` made bounded below: ``x^2 - y^2 + y^4 / 4``.

    The same saddle point at the origin (Hessian eigenvalues ``-2`` and ``2``), and two
    minima of value ``-1`` at ``(0, +-sqrt(2))`` where the quartic term stops the fall, so a
    method that escapes the saddle has somewhere to arrive.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> float(jd.problems.saddle_quartic(jnp.array([0.0, 2.0 ** 0.5])))
      -1.0
    """
    x = _as_float(x, "saddle_quartic", dim=2)
    v = x[..., 1]
    return x[..., 0] ** 2 - v**2 + 0.25 * v**4


def monkey_saddle(x: jax.typing.ArrayLike) -> jax.Array:
    r"""The monkey saddle ``x^3 - 3 x y^2``: a degenerate critical point (zero Hessian) at 0."""
    x = _as_float(x, "monkey_saddle", dim=2)
    u, v = x[..., 0], x[..., 1]
    return u**3 - 3.0 * u * v**2


def six_hump_camel(x: jax.typing.ArrayLike) -> jax.Array:
    r"""The six-hump camel function.

    .. math:: f(x, y) = (4 - 2.1 x^2 + x^4 / 3) x^2 + x y + (4 y^2 - 4) y^2

    Fifteen critical points: six minima (the two global ones, ``-1.0316``, at
    ``(+-0.0898, -+0.7127)``), two maxima and seven saddles.
    """
    x = _as_float(x, "six_hump_camel", dim=2)
    u, v = x[..., 0], x[..., 1]
    return (4.0 - 2.1 * u**2 + u**4 / 3.0) * u**2 + u * v + (4.0 * v**2 - 4.0) * v**2


def rastrigin(x: jax.typing.ArrayLike) -> jax.Array:
    r"""Rastrigin's function, in any dimension ``d``.

    .. math:: f(x) = 10 d + \sum_{i=1}^d \left(x_i^2 - 10 \cos(2 \pi x_i)\right)

    Global minimum 0 at the origin, surrounded by a regular grid of local minima, maxima and
    saddles (the catalogue lists the 25 in ``[-1.2, 1.2]^2``).
    """
    x = _as_float(x, "rastrigin")
    d = x.shape[-1]
    return 10.0 * d + jnp.sum(x**2 - 10.0 * jnp.cos(2.0 * math.pi * x), axis=-1)


def beale(x: jax.typing.ArrayLike) -> jax.Array:
    r"""Beale's function.

    .. math:: f(x, y) = (1.5 - x + x y)^2 + (2.25 - x + x y^2)^2 + (2.625 - x + x y^3)^2

    Minimum 0 at ``(3, 0.5)``, in a narrow flat valley; saddle points at ``(0, 1)`` and near
    ``(0.1005, -2.6445)``.
    """
    x = _as_float(x, "beale", dim=2)
    u, v = x[..., 0], x[..., 1]
    return (1.5 - u + u * v) ** 2 + (2.25 - u + u * v**2) ** 2 + (2.625 - u + u * v**3) ** 2


def _grid_points(roots_1d, kinds_1d):
    """Critical points of a separable 2-D function from those of its 1-D part."""
    points = []
    for xa, ka in zip(roots_1d, kinds_1d):
        for xb, kb in zip(roots_1d, kinds_1d):
            pair = {ka, kb}
            kind = "minimum" if pair == {"min"} else "maximum" if pair == {"max"} else "saddle"
            points.append(((xa, xb), kind))
    return tuple(points)


_RASTRIGIN_1D = (-0.994958637652, -0.502546036555, 0.0, 0.502546036555, 0.994958637652)

CATALOGUE: dict[str, TestFunction] = {
    "quadratic": TestFunction(
        quadratic, (((1.0, -1.0), "minimum"),), ((-2.0, 4.0), (-4.0, 2.0)), (-1.5, 1.5)
    ),
    "rosenbrock": TestFunction(
        rosenbrock, (((1.0, 1.0), "minimum"),), ((-2.0, 2.0), (-1.0, 3.0)), (-1.2, 1.0)
    ),
    "himmelblau": TestFunction(
        himmelblau,
        (
            ((3.0, 2.0), "minimum"),
            ((-2.805118086953, 3.131312518251), "minimum"),
            ((-3.779310253378, -3.283185991286), "minimum"),
            ((3.584428340330, -1.848126526964), "minimum"),
            ((-0.270844590667, -0.923038556480), "maximum"),
            ((0.086677504555, 2.884254701175), "saddle"),
            ((-3.073025750764, -0.081353044288), "saddle"),
            ((3.385154183607, 0.073851879838), "saddle"),
            ((-0.127961346731, -1.953714980245), "saddle"),
        ),
        ((-5.0, 5.0), (-5.0, 5.0)),
        (0.0, 0.0),
    ),
    "saddle": TestFunction(
        saddle, (((0.0, 0.0), "saddle"),), ((-2.0, 2.0), (-2.0, 2.0)), (1.0, 1e-3)
    ),
    "saddle_quartic": TestFunction(
        saddle_quartic,
        (
            ((0.0, 0.0), "saddle"),
            ((0.0, 1.414213562373), "minimum"),
            ((0.0, -1.414213562373), "minimum"),
        ),
        ((-1.5, 1.5), (-2.0, 2.0)),
        (1.0, 0.25),
    ),
    "monkey_saddle": TestFunction(
        monkey_saddle, (((0.0, 0.0), "degenerate"),), ((-1.5, 1.5), (-1.5, 1.5)), (1.0, 0.1)
    ),
    "six_hump_camel": TestFunction(
        six_hump_camel,
        (
            ((0.089842013100, -0.712656403021), "minimum"),
            ((-0.089842013100, 0.712656403021), "minimum"),
            ((1.703606714970, -0.796083568673), "minimum"),
            ((-1.703606714970, 0.796083568673), "minimum"),
            ((1.607104752920, 0.568651454884), "minimum"),
            ((-1.607104752920, -0.568651454884), "minimum"),
            ((1.230229876517, 0.162334584459), "maximum"),
            ((-1.230229876517, -0.162334584459), "maximum"),
            ((0.0, 0.0), "saddle"),
            ((1.109205336805, -0.768268092510), "saddle"),
            ((-1.109205336805, 0.768268092510), "saddle"),
            ((1.296070267167, 0.605084388039), "saddle"),
            ((-1.296070267167, -0.605084388039), "saddle"),
            ((1.638067984190, 0.228674069044), "saddle"),
            ((-1.638067984190, -0.228674069044), "saddle"),
        ),
        ((-2.0, 2.0), (-1.0, 1.0)),
        (-1.5, 0.5),
    ),
    "rastrigin": TestFunction(
        rastrigin,
        _grid_points(_RASTRIGIN_1D, ("min", "max", "min", "max", "min")),
        ((-5.12, 5.12), (-5.12, 5.12)),
        (2.5, 2.5),
    ),
    "beale": TestFunction(
        beale,
        (
            ((3.0, 0.5), "minimum"),
            ((0.0, 1.0), "saddle"),
            ((0.100537937324, -2.644513585023), "saddle"),
        ),
        ((-4.5, 4.5), (-4.5, 4.5)),
        (1.0, 1.0),
    ),
}
"""Every test function by name, as a :class:`TestFunction`: the function, its critical
points with their kinds, a plot domain and a standard start (:func:`get` looks one up)."""


def get(name: str) -> TestFunction:
    """The catalogue entry called ``name``.

    Example:
      >>> import jaxdescent as jd
      >>> jd.problems.get("rosenbrock").start
      (-1.2, 1.0)
    """
    try:
        return CATALOGUE[name]
    except (KeyError, TypeError):
        listed = ", ".join(repr(k) for k in CATALOGUE)
        raise ValueError(f"unknown test function {name!r}; valid names are {listed}") from None


# --- data sets ---------------------------------------------------------------------------


def _count(name: str, value: Any) -> int:
    return check_int(name, value, minimum=1)


def regression_with_outliers(
    key: jax.Array,
    n: int = 100,
    outlier_fraction: float = 0.1,
    *,
    slope: float = 2.0,
    intercept: float = 1.0,
    noise: float = 0.3,
    outlier_shift: float = 8.0,
) -> tuple[jax.Array, jax.Array]:
    """Points on a line ``y = slope x + intercept`` with Gaussian noise and some outliers.

    ``x`` is uniform on ``[-2, 2]``; a random ``round(outlier_fraction * n)`` of the targets
    are pushed up by ``outlier_shift`` (plus unit noise), all on the same side, so they drag a
    least-squares (Gaussian) fit off the line while a least-absolute-deviations (Laplace)
    fit stays close to it.

    Returns:
      ``(x, y)``: float32, shapes ``(n, 1)`` and ``(n,)``.

    Example:
      >>> import jax, jaxdescent as jd
      >>> x, y = jd.problems.regression_with_outliers(jax.random.key(0), n=50)
      >>> x.shape, y.shape, str(y.dtype)
      ((50, 1), (50,), 'float32')
    """
    n = _count("n", n)
    check_unit_interval("outlier_fraction", outlier_fraction, closed_right=True)
    for name, value in (
        ("slope", slope),
        ("intercept", intercept),
        ("outlier_shift", outlier_shift),
    ):
        check_real(name, value)
    check_nonnegative("noise", noise)
    m = round(float(outlier_fraction) * n)
    coefs = jnp.asarray([slope, intercept, noise, outlier_shift], jnp.float32)
    return _regression_with_outliers(key, coefs, n, m)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _regression_with_outliers(key, coefs, n, m):
    slope, intercept, noise, outlier_shift = coefs
    kx, kn, ko, kp = jax.random.split(key, 4)
    x = jax.random.uniform(kx, (n, 1), jnp.float32, -2.0, 2.0)
    y = slope * x[:, 0] + intercept + noise * jax.random.normal(kn, (n,), jnp.float32)
    chosen = jax.random.permutation(kp, n)[:m]
    shift = outlier_shift + jax.random.normal(ko, (m,), jnp.float32)
    return x, y.at[chosen].add(shift)


def two_moons(key: jax.Array, n: int = 200, noise: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Two interleaving half circles, a classic non-linearly-separable binary problem.

    The upper moon ``(cos t, sin t)`` has label 0 and the lower one ``(1 - cos t,
    0.5 - sin t)`` label 1, for ``t`` evenly spaced on ``[0, pi]`` (``n // 2`` points on the
    first, the rest on the second), plus Gaussian noise of standard deviation ``noise``,
    shuffled (as scikit-learn's ``make_moons``).

    Returns:
      ``(x, y)``: float32, shapes ``(n, 2)`` and ``(n,)`` with labels 0.0 and 1.0.

    Example:
      >>> import jax, jaxdescent as jd
      >>> x, y = jd.problems.two_moons(jax.random.key(0), n=100)
      >>> x.shape, float(y.sum())
      ((100, 2), 50.0)
    """
    n = _count("n", n)
    check_nonnegative("noise", noise)
    return _two_moons(key, jnp.asarray(noise, jnp.float32), n)


@functools.partial(jax.jit, static_argnums=2)
def _two_moons(key, noise, n):
    n_upper = n // 2
    n_lower = n - n_upper
    t_upper = jnp.linspace(0.0, math.pi, n_upper, dtype=jnp.float32)
    t_lower = jnp.linspace(0.0, math.pi, n_lower, dtype=jnp.float32)
    upper = jnp.stack([jnp.cos(t_upper), jnp.sin(t_upper)], axis=1)
    lower = jnp.stack([1.0 - jnp.cos(t_lower), 0.5 - jnp.sin(t_lower)], axis=1)
    x = jnp.concatenate([upper, lower])
    y = jnp.concatenate([jnp.zeros(n_upper, jnp.float32), jnp.ones(n_lower, jnp.float32)])
    k_noise, k_perm = jax.random.split(key)
    x = x + noise * jax.random.normal(k_noise, x.shape, jnp.float32)
    perm = jax.random.permutation(k_perm, n)
    return x[perm], y[perm]


def linearly_separable(
    key: jax.Array, n: int = 100, d: int = 2, *, margin: float = 0.5
) -> tuple[jax.Array, jax.Array]:
    """Two classes split by a random hyperplane through the origin, with a gap between them.

    Points are standard normal in ``d`` dimensions; each is labelled by the side of the
    hyperplane ``w^T x = 0`` it falls on (``w`` a random unit vector) and then moved
    ``margin`` further away from it, so the classes are separated by a gap of ``2 margin``.
    Unpenalised logistic regression has no finite minimiser on such data: its weights grow
    without bound.

    Returns:
      ``(x, y)``: float32, shapes ``(n, d)`` and ``(n,)`` with labels 0.0 and 1.0.

    Example:
      >>> import jax, jaxdescent as jd
      >>> x, y = jd.problems.linearly_separable(jax.random.key(0), n=20, d=3)
      >>> x.shape, y.shape
      ((20, 3), (20,))
    """
    n = _count("n", n)
    d = _count("d", d)
    check_nonnegative("margin", margin)
    return _linearly_separable(key, jnp.asarray(margin, jnp.float32), n, d)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _linearly_separable(key, margin, n, d):
    kw, kx = jax.random.split(key)
    w = jax.random.normal(kw, (d,), jnp.float32)
    w = w / jnp.linalg.norm(w)
    x = jax.random.normal(kx, (n, d), jnp.float32)
    side = jnp.where(x @ w >= 0, 1.0, -1.0).astype(jnp.float32)
    x = x + margin * side[:, None] * w[None, :]
    return x, (side > 0).astype(jnp.float32)
