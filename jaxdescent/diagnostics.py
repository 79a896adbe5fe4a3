r"""Curvature diagnostics: the Hessian, its spectrum, and what kind of critical point a point is.

At a critical point (``grad f = 0``) the Hessian's eigenvalues decide the kind: all positive,
a minimum; all negative, a maximum; both signs, a saddle, whose *index* is the number of
negative eigenvalues (the directions that go down); and with zero eigenvalues and no sign
change the second-order test says nothing: a degenerate point (the monkey saddle
``x^3 - 3 x y^2`` is one).

Functions take ``loss(params, *args)`` with ``params`` any pytree, flattened with
``jax.flatten_util.ravel_pytree``; the Hessian is the matrix on that flat vector.
:func:`hessian_spectrum` with ``method='lanczos'`` needs only Hessian-vector products, so it
finds the extreme eigenvalues of models far too large for a dense Hessian.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdescent import _curvature as curvature
from jaxdescent._checks import check_callable, check_choice, check_int, check_positive
from jaxdescent._engine.cache import cached, owner_ref

__all__ = [
    "CriticalPoint",
    "classify_critical_point",
    "condition_number",
    "hessian",
    "hessian_spectrum",
]


def _as_float(leaf: Any) -> jax.Array:
    """A float leaf, at least float32: LAPACK (eigh, solves) has no half-precision kernels, so
    float16/bfloat16 params are analysed in float32."""
    leaf = jnp.asarray(leaf)
    return leaf.astype(curvature.work_dtype(leaf.dtype))


def _flat_loss(loss: Callable, params: Any, args: tuple) -> tuple[Callable, jax.Array]:
    """``(f, x)`` with ``x`` the flattened params and ``f(x) = loss(params, *args)``."""
    x, f, _ = curvature.flatten(lambda p: loss(p, *args), params)
    return f, x


def _prepare(loss: Callable, params: Any) -> tuple[Any, int]:
    check_callable("loss", loss)
    params = jax.tree.map(_as_float, params)
    n = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    if n == 0:
        raise ValueError("params must contain at least one number")
    return params, n


def _compiled(impl: Callable, loss: Callable, *rest: Any):
    """``impl(loss, *rest)``, compiled once per ``loss`` and input shapes.

    The programs live in jaxdescent's one cache (:mod:`jaxdescent._engine.cache`), which
    holds ``loss`` weakly: a loss closing over a large data set is released with it.
    """
    params, args = rest[0], rest[1]
    try:
        out = jax.eval_shape(lambda p: loss(p, *args), params)
    except Exception as err:  # the user's loss failed to trace: say which call
        raise ValueError(f"calling loss(params, *args) failed: {err}") from err
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        got = f"shape {getattr(out, 'shape', None)} and dtype {getattr(out, 'dtype', type(out))}"
        raise ValueError(
            f"loss must return a floating-point scalar (shape ()), as fit requires; got {got}"
        )
    return cached(loss, ("diagnostics", impl), lambda: _jitted(impl, owner_ref(loss)))(*rest)


def _hessian_impl(loss, params, args):
    f, x = _flat_loss(loss, params, args)
    return curvature.symmetric_hessian(f, x)


def _eigenvalues_impl(loss, params, args):
    return jnp.linalg.eigvalsh(_hessian_impl(loss, params, args))


def _critical_impl(loss, params, args):
    f, x = _flat_loss(loss, params, args)
    return jnp.linalg.norm(jax.grad(f)(x)), _eigenvalues_impl(loss, params, args)


def _lanczos_impl(loss, params, args, k, key):
    f, x = _flat_loss(loss, params, args)
    return _lanczos(curvature.hvp(f, x), x.size, k, key, x.dtype)


def _jitted(impl: Callable, loss_ref: Callable) -> Callable:
    static = (2,) if impl is _lanczos_impl else ()  # k sets array shapes

    def run(*rest):
        return impl(loss_ref(), *rest)

    return jax.jit(run, static_argnums=static)


def hessian(loss: Callable, params: Any, *args: Any) -> jax.Array:
    r"""The Hessian ``d^2 loss / d theta^2`` at ``params``, as an ``(n, n)`` matrix.

    ``theta`` is the flattened ``params`` (``ravel_pytree`` order); ``args`` (arrays or
    pytrees of arrays) are passed on, ``loss(params, *args)``. Computed by ``jax.hessian``
    (forward over reverse mode), compiled once per ``loss`` and input shapes.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> jd.diagnostics.hessian(jd.problems.saddle, jnp.zeros(2)).tolist()
      [[2.0, 0.0], [0.0, -2.0]]
    """
    params, _ = _prepare(loss, params)
    return _compiled(_hessian_impl, loss, params, args)


def _lanczos(hvp: Callable, n: int, k: int, key: jax.Array, dtype) -> jax.Array:
    """Ritz values (ascending) of ``k`` Lanczos steps with full reorthogonalisation.

    On breakdown (an invariant Krylov subspace, ``beta ~ 0``) the next basis vector is a fresh
    random vector orthogonal to the basis, with a zero coupling in the tridiagonal matrix, so
    the Ritz values stay eigenvalues of the operator even when ``k`` exceeds the number of
    distinct eigenvalues.
    """
    eps = jnp.finfo(dtype).eps

    def random_unit(j):
        return jax.random.normal(jax.random.fold_in(key, j), (n,), dtype)

    def orthogonalise(w, basis):
        for _ in range(2):  # "twice is enough" (Kahan, Parlett)
            w = w - basis.T @ (basis @ w)
        return w

    def normalise(w):
        norm = jnp.linalg.norm(w)
        return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), 0.0), norm

    v0, _ = normalise(random_unit(0))
    basis = jnp.zeros((k + 1, n), dtype).at[0].set(v0)
    alphas = jnp.zeros(k, dtype)
    betas = jnp.zeros(k, dtype)

    def body(j, state):
        basis, alphas, betas = state
        v = basis[j]
        w = hvp(v)
        alpha = jnp.vdot(v, w)
        w = orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.abs(alpha) + jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0.0)
        breakdown = beta <= jnp.sqrt(eps) * jnp.maximum(scale, eps)
        fresh, _ = normalise(orthogonalise(random_unit(j + 1), basis))
        nxt, _ = normalise(w)
        nxt = jnp.where(breakdown, fresh, nxt)
        beta = jnp.where(breakdown, 0.0, beta)
        return basis.at[j + 1].set(nxt), alphas.at[j].set(alpha), betas.at[j].set(beta)

    _, alphas, betas = jax.lax.fori_loop(0, k, body, (basis, alphas, betas))
    t = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(t)


_METHODS = ("eigh", "lanczos")


def hessian_spectrum(
    loss: Callable,
    params: Any,
    *args: Any,
    method: str = "eigh",
    k: int | None = None,
    key: jax.Array | None = None,
    iterations: int | None = None,
) -> jax.Array:
    r"""Eigenvalues of the Hessian at ``params``, ascending.

    ``k`` means the same for both methods (as ``which="BE"`` in scipy's ``eigsh``, by count
    per end): the ``k`` smallest and the ``k`` largest eigenvalues, ``2k`` values ascending
    (all of them when ``2k >= n``); ``None`` returns every eigenvalue the method computes.

    ``method='eigh'`` forms the Hessian and computes all ``n`` eigenvalues (exact, ``n^2``
    memory, ``n^3`` time).

    ``method='lanczos'`` runs ``iterations`` steps of the Lanczos iteration (default
    ``min(n, max(30, 2k))``) over Hessian-vector products, with full reorthogonalisation, and
    computes that many Ritz values. It never forms the Hessian: memory is ``O(m n)`` and time
    ``m`` Hessian-vector products for ``m`` iterations. The *extreme* Ritz values converge
    first, to the smallest and largest eigenvalues; interior ones are rough. With ``m = n``
    they are all eigenvalues (up to rounding).

    Args:
      loss: ``loss(params, *args) -> scalar``.
      params: where to evaluate, any pytree.
      *args: passed on to ``loss`` (e.g. a data batch).
      method: ``'eigh'`` or ``'lanczos'``.
      k: eigenvalues from each end of the spectrum (at least 1); see above.
      key: PRNG key for Lanczos' random start vector (default ``jax.random.key(0)``).
      iterations: Lanczos steps ``m``, at most ``n`` (``'lanczos'`` only).

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> jd.diagnostics.hessian_spectrum(jd.problems.saddle, jnp.zeros(2)).tolist()
      [-2.0, 2.0]

    References:
      Lanczos, *An iteration method for the solution of the eigenvalue problem of linear
      differential and integral operators*, 1950. Ghorbani, Krishnan and Xiao, *An
      investigation into neural net optimization via Hessian eigenvalue density*, ICML 2019.
    """
    check_choice("method", method, _METHODS)
    params, n = _prepare(loss, params)
    if k is not None:
        k = check_int("k", k, minimum=1)
    if method == "eigh":
        if iterations is not None:
            raise ValueError("iterations applies to method='lanczos' only; got method='eigh'")
        return _ends(_compiled(_eigenvalues_impl, loss, params, args), k)
    if iterations is None:
        iterations = min(n, max(30, 2 * (k or 0)))
    iterations = check_int("iterations", iterations, minimum=1)
    if iterations > n:
        raise ValueError(
            f"iterations must be at most the number of parameters ({n}) for lanczos; got "
            f"{iterations}"
        )
    if key is None:
        key = jax.random.key(0)
    return _ends(_compiled(_lanczos_impl, loss, params, args, iterations, key), k)


def _ends(values: jax.Array, k: int | None) -> jax.Array:
    """The ``k`` smallest and ``k`` largest of ascending ``values`` (all when ``2k >= m``)."""
    if k is None or 2 * k >= values.shape[0]:
        return values
    return jnp.concatenate([values[:k], values[-k:]])


def condition_number(
    loss_or_matrix: Callable | jax.typing.ArrayLike, params: Any = None, *args: Any
) -> jax.Array:
    r"""The condition number ``kappa = sigma_max / sigma_min`` of a Hessian (or of a matrix).

    ``condition_number(loss, params, *args)`` uses the Hessian of ``loss`` at ``params``;
    ``condition_number(matrix)`` a given matrix. For a symmetric matrix ``sigma`` are the
    absolute eigenvalues. ``kappa`` governs gradient descent: on a quadratic its error shrinks
    by about ``(kappa - 1) / (kappa + 1)`` per step at best. Singular: ``inf``.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> float(jd.diagnostics.condition_number(jnp.diag(jnp.array([1.0, 100.0]))))
      100.0
    """
    if callable(loss_or_matrix):
        matrix = hessian(loss_or_matrix, params, *args)
    else:
        if params is not None or args:
            raise TypeError("condition_number(matrix) takes no further arguments")
        matrix = jnp.asarray(loss_or_matrix)
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D; got shape {matrix.shape}")
    sigma = jnp.linalg.svd(matrix, compute_uv=False)
    smax, smin = jnp.max(sigma), jnp.min(sigma)
    return jnp.where(smin > 0, smax / jnp.where(smin > 0, smin, 1.0), jnp.inf)


_KINDS = ("minimum", "maximum", "saddle", "degenerate", "not critical")


class CriticalPoint(NamedTuple):
    """What :func:`classify_critical_point` found; compares equal to its ``kind`` string.

    Attributes:
      kind: ``'minimum'``, ``'maximum'``, ``'saddle'``, ``'degenerate'`` or ``'not critical'``.
      index: the number of negative Hessian eigenvalues (a saddle's index: how many
        independent directions go down).
      eigenvalues: the Hessian's eigenvalues, ascending.
      grad_norm: the gradient norm at the point.
    """

    kind: str
    index: int
    eigenvalues: jax.Array
    grad_norm: float

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.kind == other
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.kind, self.index))

    def __str__(self) -> str:
        return self.kind


def classify_critical_point(
    f: Callable,
    x: Any,
    *args: Any,
    tol: float | None = None,
    eig_tol: float | None = None,
) -> CriticalPoint:
    r"""Classify ``x`` by the gradient and the Hessian eigenvalues of ``f(x, *args)`` there.

    With ``lambda_i`` the eigenvalues and ``s = max(1, max_i |lambda_i|)`` their scale:

    - ``'not critical'`` if ``||grad f(x)|| > tol * s``;
    - otherwise, calling ``lambda`` negative when ``lambda < -eig_tol * s`` and positive when
      ``lambda > eig_tol * s``: ``'minimum'`` if all are positive, ``'maximum'`` if all are
      negative, ``'saddle'`` if there are both signs (zero eigenvalues or not), and
      ``'degenerate'`` otherwise (some near zero and no sign change: the second-order test
      cannot decide).

    The default ``tol`` is the square root of the dtype's machine epsilon (about ``3e-4`` in
    float32, ``1.5e-8`` in float64), since a point known to ``d`` digits has a gradient of
    about ``s 10^-d``; raise it to accept points an optimiser stopped near. ``eig_tol``
    defaults to ``eps^(2/3)`` (about ``2.4e-5`` and ``3.7e-11``), so minima with condition
    numbers up to about ``4e4`` in float32 (``3e10`` in float64) are recognised. The
    derivatives are compiled once per ``f`` and input shape; the result is a Python value,
    so this runs outside ``jit``.

    Returns:
      :class:`CriticalPoint` ``(kind, index, eigenvalues, grad_norm)``; ``index`` is the
      number of negative eigenvalues (a saddle's index). It compares equal to its kind.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> cp = jd.diagnostics.classify_critical_point(jd.problems.saddle, jnp.zeros(2))
      >>> cp.kind, cp.index, cp == "saddle"
      ('saddle', 1, True)
    """
    params, _ = _prepare(f, x)
    eps = float(np.finfo(np.dtype(jnp.result_type(*jax.tree.leaves(params)))).eps)
    if tol is None:
        tol = eps**0.5
    check_positive("tol", tol)
    if eig_tol is None:
        eig_tol = eps ** (2.0 / 3.0)
    check_positive("eig_tol", eig_tol)
    grad_norm, eigenvalues = _compiled(_critical_impl, f, params, args)
    grad_norm = float(grad_norm)
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if not (np.all(np.isfinite(ev)) and np.isfinite(grad_norm)):
        raise ValueError(f"the gradient or Hessian at x is not finite; x = {x!r}")
    scale = max(1.0, float(np.max(np.abs(ev))))
    negative = int(np.sum(ev < -eig_tol * scale))
    positive = int(np.sum(ev > eig_tol * scale))
    if grad_norm > tol * scale:
        kind = "not critical"
    elif negative and positive:
        kind = "saddle"
    elif positive == ev.size:
        kind = "minimum"
    elif negative == ev.size:
        kind = "maximum"
    else:
        kind = "degenerate"
    return CriticalPoint(kind, negative, eigenvalues, grad_norm)
