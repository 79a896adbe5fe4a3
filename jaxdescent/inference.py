r"""Standard errors and covariances of fitted parameters, from the likelihood.

At a maximum-likelihood estimate ``theta`` the estimate is approximately normal, with
covariance the inverse of the information. For a loss built by
:func:`jaxdescent.losses.nll` (the *mean* negative log-likelihood of ``n`` examples):

.. math::
   \mathrm{fisher}:\ \ \Sigma = \phi\,(n\,G)^{-1}, \quad G = \tfrac1n J^\top F J; \qquad
   \mathrm{hessian}:\ \ \Sigma = \phi\,(n\,\nabla^2 L)^{-1}; \qquad
   \mathrm{sandwich}:\ \ \Sigma = A^{-1} \Big(\sum_i s_i s_i^\top\Big) A^{-1},\ A = n\,\nabla^2 L,

with ``J`` the Jacobian of the model's outputs, ``F`` the likelihood's Fisher information in
output space and ``s_i`` the gradient of example ``i``'s negative log-likelihood. The
*dispersion* ``phi`` is 1 for likelihoods whose variance the model fixes (Bernoulli,
Categorical, Poisson, learned scales). For a Gaussian (or Laplace) with a fixed ``scale`` the
noise level is not known in advance, so by default it is estimated from the residuals with
``N - p`` degrees of freedom, where ``N`` counts the observed target values (``n k`` for ``k``
outputs per example) and ``p`` the parameters:
``phi = sum (y - mu)^2 / ((N - p) scale^2)`` (Gaussian), as statsmodels' GLM and scipy's
``curve_fit`` do; then ``Sigma = s^2 (J^T J)^{-1}`` with ``s^2 = RSS / (N - p)``, the textbook
nonlinear least-squares covariance. The sandwich (Huber-White, "HC0") estimator needs no
dispersion and stays valid when the likelihood is misspecified.

**The numeric core.** The information is inverted with its units taken out: scaled to a unit
diagonal, ``S = D^{-1/2} I D^{-1/2}`` with ``D = |diag I|``, so that parameters of very
different sizes (NIST's) do not look singular, and factorised as ``S = V diag(lambda) V^T``
(a symmetric eigendecomposition, in the params' precision: float32 or, with x64, float64).
With ``tol = eps p max|lambda|``, the matrix is *not positive definite* when
``lambda_min < -tol`` (the params are not a maximum of the likelihood) and *singular* when
``|lambda_min| <= tol`` (the data do not determine every parameter); else
``Sigma = phi D^{-1/2} V diag(1/lambda) V^T D^{-1/2}``. All of it is ``jax.numpy``: it runs
under ``jax.jit`` and ``jax.vmap``. :func:`uncertainty` returns the covariance, the standard
errors, the dispersion and a :class:`Flag`, with NaN where the flag says no covariance
exists; it raises only for bad arguments. :func:`covariance` and :func:`standard_errors`
raise ``ValueError`` for those flags (and warn with :class:`InfiniteEstimateWarning`) when
every input is a concrete array; under a JAX transformation (any traced input) nothing can be
raised, and they return NaN where the flag says so. Argument errors known from shapes and
types (the loss, the data, ``method``, a concrete ``dispersion``, too few degrees of
freedom) raise in both cases, before anything is compiled.

**Estimates at infinity.** For a Bernoulli or Categorical likelihood with separated classes,
or a Poisson one with a group of all-zero counts, the likelihood has no maximum: it keeps
rising as some parameters go to infinity, and a fit only stops where the gradient is small.
Its estimates and standard errors are then meaningless. An element (a target value; for a
Categorical, a class other than the observed one) is at the boundary when the model gives
the outcomes other than the observed one a probability of at most 0.01 (a fitted probability
within 0.01 of 0 or 1, a fitted rate below about 0.01 where the count is 0). The
MLE is reported not to exist (:attr:`Flag.INFINITE_ESTIMATE`) when every element is at the
boundary (statsmodels' perfect-prediction test), or when there is a direction ``d`` along
which the information of the other elements is zero to working precision (``J_R d = 0``) and
every boundary element moves towards its observed outcome. Along ``theta + t d`` no
element's likelihood then falls and some rise for ever: for a model linear in its
parameters, ``d`` is a proof that no maximum exists (Albert and Anderson's separation; for a
Poisson, zero counts whose rates can go to 0). The directions tried are the null vectors of
the other elements' information and the Newton step projected on them. A fit that is
merely close to 0 or 1 at a finite maximum is not reported: its boundary elements pull in
opposite directions, or others hold the direction.

References:
  Seber and Wild, *Nonlinear Regression*, Wiley, 1989, section 2.1 (least squares).
  McCullagh and Nelder, *Generalized Linear Models*, 2nd ed., 1989, section 2.5 (GLMs).
  White, *A heteroskedasticity-consistent covariance matrix estimator*, Econometrica 48,
  1980 (the sandwich).
  Albert and Anderson, *On the existence of maximum likelihood estimates in logistic
  regression models*, Biometrika 71, 1984 (separation).
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxdescent import _curvature as curvature
from jaxdescent import data as data_lib
from jaxdescent._checks import check_choice, check_float_tree, check_positive
from jaxdescent._engine.cache import cached, owner_ref
from jaxdescent.likelihoods import Bernoulli, Categorical, Gaussian, Laplace, Poisson
from jaxdescent.losses import NLL
from jaxdescent.optim.linear_solve import after

__all__ = [
    "Flag",
    "InfiniteEstimateWarning",
    "Uncertainty",
    "covariance",
    "dispersion",
    "standard_errors",
    "uncertainty",
]

_METHODS = ("fisher", "hessian", "sandwich")

# an element is at the boundary when the outcomes other than the observed one have a fitted
# probability of at most this (the module docstring, *Estimates at infinity*)
_BOUNDARY = 0.01


class Flag(enum.IntEnum):
    """What :func:`uncertainty` found; ``str`` gives the name.

    - ``OK``: the covariance exists.
    - ``SINGULAR``: the information matrix is singular to working precision (the data do not
      determine every parameter at these params; or a fit has run so far towards an estimate
      at infinity that the information underflowed, which the eager error then says).
    - ``NOT_POSITIVE_DEFINITE``: the information has a negative scaled eigenvalue
      (``method="hessian"`` or ``"sandwich"`` at params that are not a maximum).
    - ``NON_FINITE``: the information, the scores or the estimated dispersion is not finite.
    - ``INVALID_DISPERSION``: a ``dispersion`` given as a traced value is not a finite
      number > 0.
    - ``INFINITE_ESTIMATE``: the information is fine but the MLE does not exist (separation,
      a group of zero counts); the covariance is returned but means nothing.

    For the flags before the last one the covariance and standard errors are NaN.
    """

    OK = 0
    SINGULAR = 1
    NOT_POSITIVE_DEFINITE = 2
    NON_FINITE = 3
    INVALID_DISPERSION = 4
    INFINITE_ESTIMATE = 5

    def __str__(self) -> str:
        return self.name


class InfiniteEstimateWarning(RuntimeWarning):
    """The maximum-likelihood estimate does not exist: the likelihood keeps rising as some
    parameters go to infinity (separation in a Bernoulli or Categorical model, a group of
    zero counts in a Poisson one), so the fitted params and their standard errors are not
    meaningful."""


class Uncertainty(NamedTuple):
    """What :func:`uncertainty` returns: NaN in ``covariance`` and ``standard_errors`` where
    ``flag`` is ``SINGULAR``, ``NOT_POSITIVE_DEFINITE``, ``NON_FINITE`` or
    ``INVALID_DISPERSION``."""

    covariance: jax.Array
    """The ``(p, p)`` covariance of the flattened params (``ravel_pytree`` order)."""
    standard_errors: Any
    """The square roots of its diagonal, a pytree shaped like the params."""
    dispersion: jax.Array
    """The dispersion ``phi`` used (given, estimated, or 1; 1 for the sandwich)."""
    flag: jax.Array
    """An int32 scalar, a :class:`Flag` value (``Flag(int(flag))`` names it)."""


class _Core(NamedTuple):
    """The numeric core's result: the public fields and what the eager messages need."""

    covariance: jax.Array
    dispersion: jax.Array
    flag: jax.Array
    low: jax.Array  # smallest and largest eigenvalue of the scaled information
    high: jax.Array
    diverging: jax.Array  # the MLE does not exist (whatever the flag)
    boundary: jax.Array  # how many elements are at the boundary
    elements: jax.Array  # how many could be
    direction: jax.Array  # (p,) the direction the fit diverges along, in scaled units


# --- checks (on shapes and types; values only where they are concrete) -----------------------


def _check(loss: Any, params: Any, data: Any) -> tuple[Any, Any]:
    if not isinstance(loss, NLL):
        raise TypeError(
            "loss must be built by jd.losses.nll(apply, likelihood), so that the likelihood "
            f"behind it is known; got {loss!r}"
        )
    check_float_tree("params", params)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"data must be the pair (x, y) the loss was fitted on; got {type(data)}")
    # traced leaves are checked on their shapes and dtypes: zero-stride stand-ins take their place
    data_lib.check_data(jax.tree.map(_stand_in, tuple(data)))
    x, y = (jnp.asarray(a) for a in data)
    return x, y


def _stand_in(leaf: Any) -> Any:
    if isinstance(leaf, jax.core.Tracer):
        return np.broadcast_to(np.zeros((), leaf.dtype), leaf.shape)
    return leaf


def _check_dispersion(value: Any) -> jax.Array | None:
    """``None``, or the dispersion as a scalar array; a concrete one must be finite and > 0."""
    if value is None:
        return None
    if isinstance(value, jax.core.Tracer):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(
                f"dispersion must be a real scalar; got a traced {value.dtype} of shape "
                f"{value.shape}"
            )
        return value
    if isinstance(value, bool) or np.ndim(value) != 0:
        raise TypeError(f"dispersion must be a real scalar > 0; got {value!r}")
    check_positive("dispersion", value)
    return jnp.asarray(value, dtype=jnp.result_type(float))


def _estimates_dispersion(likelihood: Any) -> bool:
    return isinstance(likelihood, (Gaussian, Laplace)) and not likelihood.learn_scale


def _degrees_of_freedom(params: Any, y: Any) -> tuple[int, int, int]:
    """``(N - p, N, p)``: observed target values less parameters (shapes only)."""
    size = int(np.prod(np.shape(y)))
    p = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
    return size - p, size, p


def _check_degrees_of_freedom(params: Any, y: Any) -> None:
    dof, size, p = _degrees_of_freedom(params, y)
    if dof <= 0:
        raise ValueError(
            "estimating the dispersion needs more observed target values than parameters; got "
            f"{size} target values (y of shape {tuple(np.shape(y))}) and p={p} (pass "
            "dispersion= explicitly)"
        )


# --- the numeric core -------------------------------------------------------------------------


def _dispersion_estimate(likelihood: Any, output: jax.Array, y: jax.Array, dof: int) -> jax.Array:
    """``phi`` of a fixed-scale Gaussian or Laplace with ``dof`` degrees of freedom."""
    residual = y - likelihood.predict(output).reshape(y.shape)
    scale = jnp.asarray(likelihood.scale, residual.dtype)
    if isinstance(likelihood, Gaussian):
        return jnp.sum(residual**2) / (dof * scale**2)
    return (jnp.sum(jnp.abs(residual)) / (dof * scale)) ** 2


def _information(loss_ref: Callable, method: str) -> Callable:
    """``(params, x, y) -> (information, gradient, per-example scores or None)``, flat."""

    def run(params, x, y):
        loss = loss_ref()
        flat, unravel = ravel_pytree(params)
        n = y.shape[0]

        def total(v):
            return n * loss(unravel(v), (x, y))

        grad = jax.grad(total)(flat)
        if method == "fisher":
            gram = curvature.ggn_dense(lambda p: loss.apply(p, x), loss.likelihood, y, params)
            return n * gram, grad, None
        info = curvature.symmetric_hessian(total, flat)
        scores = None
        if method == "sandwich":
            scores = jax.jacrev(lambda v: loss.per_example(unravel(v), (x, y)))(flat)
        return info, grad, scores

    return run


class _Boundary(NamedTuple):
    """The elements at the boundary, and how a change of the outputs moves them."""

    at: jax.Array  # bool, one per element
    eligible: jax.Array  # bool: elements that can be at the boundary at all
    exempt: jax.Array  # bool: elements that need not be there for a perfect prediction
    limit: jax.Array  # the outputs with the boundary elements sent to their limit
    toward: Callable  # (output changes, shape out.shape + (c,)) -> (elements + (c,)): > 0
    # where an element moves towards its observed outcome


def _boundary(likelihood: Any, out: jax.Array, y: jax.Array) -> _Boundary | None:
    """Boundary elements of a Bernoulli, Categorical or Poisson likelihood (else ``None``)."""
    if isinstance(likelihood, Bernoulli):
        z = out.reshape(y.shape)
        hard = (y == 0) | (y == 1)
        other = jax.nn.sigmoid(jnp.where(y == 1, -z, z))  # P(the other label), no cancellation
        at = hard & (other <= _BOUNDARY)
        sign = jnp.where(y == 1, 1.0, -1.0).astype(out.dtype)
        limit = jnp.where(at, jnp.where(y == 1, jnp.inf, -jnp.inf), z).reshape(out.shape)

        def toward(u):
            return sign[..., None] * u.reshape((*y.shape, u.shape[-1]))

        return _Boundary(at, hard, jnp.zeros_like(at), limit, toward)
    if isinstance(likelihood, Poisson):
        eta = out.reshape(y.shape)
        # P(count > 0) = 1 - exp(-rate) <= _BOUNDARY
        at = (y == 0) & (-jnp.expm1(-jnp.exp(eta)) <= _BOUNDARY)
        limit = jnp.where(at, -jnp.inf, eta).reshape(out.shape)

        def toward(u):
            return -u.reshape((*y.shape, u.shape[-1]))

        return _Boundary(at, y == 0, jnp.zeros_like(at), limit, toward)
    if isinstance(likelihood, Categorical):
        if jnp.issubdtype(y.dtype, jnp.integer):
            target = jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)
        else:
            target = y.astype(out.dtype)
        unobserved = target == 0
        at = unobserved & (jax.nn.softmax(out, axis=-1) <= _BOUNDARY)
        limit = jnp.where(at, -jnp.inf, out)
        weights = target / jnp.sum(target, axis=-1, keepdims=True)

        def toward(u):  # the observed classes' logits gain on class k's
            return jnp.sum(weights[..., None] * u, axis=-2, keepdims=True) - u

        return _Boundary(at, unobserved, target == 1, limit, toward)
    return None


def _divergence(
    loss: NLL, flat: jax.Array, unravel: Callable, x: jax.Array, y: jax.Array, spectrum: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(diverging, boundary count, eligible count, direction)``: whether the likelihood has
    no maximum, by the test of the module docstring (*Estimates at infinity*)."""
    lam, vec, root, tol, grad = spectrum
    likelihood = loss.likelihood
    p = flat.size

    def outputs(v):
        return loss.apply(unravel(v), x)

    out = outputs(flat)
    b = _boundary(likelihood, out, y)
    zero = jnp.zeros([], bool), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
    if b is None:
        return (*zero, jnp.zeros_like(flat))
    flat_out = lambda v: outputs(v).reshape(-1)  # noqa: E731
    jac = jax.jacfwd(flat_out)(flat) if p <= out.size else jax.jacrev(flat_out)(flat)  # (m, p)
    # the information of the elements off the boundary, J^T F(limit) J, in the scaled units
    columns = jac.T.reshape((p, *out.shape))
    fj = jax.vmap(lambda c: likelihood.fisher_vp(b.limit, c, y))(columns)
    rest = (fj.reshape(p, -1) @ jac) / jnp.outer(root, root)
    # after the information's eigendecomposition, not beside it (linear_solve.after)
    rest = after(rest, lam)
    lam_rest, vec_rest = jnp.linalg.eigh(0.5 * (rest + rest.T))
    null = lam_rest <= tol
    # the Newton step (its near-null directions capped at 1/tol), projected on that null space
    newton = -(vec @ ((vec.T @ (grad / root)) / jnp.maximum(lam, jnp.where(tol > 0, tol, 1.0))))
    projected = (vec_rest * null[None, :]) @ (vec_rest.T @ newton)
    candidates = jnp.concatenate([vec_rest, projected[:, None]], axis=1)  # scaled, (p, p + 1)
    usable = jnp.concatenate([null, jnp.ones([1], bool)])
    moves = b.toward((jac @ (candidates / root[:, None])).reshape((*out.shape, p + 1)))
    at = jnp.broadcast_to(b.at[..., None], moves.shape)
    axes = tuple(range(moves.ndim - 1))
    big = jnp.max(jnp.where(at, jnp.abs(moves), 0.0), axis=axes)
    lowest = jnp.min(jnp.where(at, moves, jnp.inf), axis=axes)
    highest = jnp.max(jnp.where(at, moves, -jnp.inf), axis=axes)
    slack = jnp.sqrt(jnp.finfo(moves.dtype).eps) * big
    one_way = (big > 0) & ((lowest >= -slack) | (highest <= slack))
    found = usable & one_way
    every = jnp.all(b.at | b.exempt)  # a perfect prediction
    diverging = every | jnp.any(found)
    direction = jnp.where(jnp.any(found), candidates[:, jnp.argmax(found)], newton)
    direction = direction / jnp.maximum(jnp.max(jnp.abs(direction)), jnp.finfo(flat.dtype).tiny)
    count = jnp.sum(b.at).astype(jnp.int32)
    return diverging, count, jnp.sum(b.eligible).astype(jnp.int32), direction


def _core(loss_ref: Callable, method: str, given: bool) -> Callable:
    """``(params, x, y, phi) -> _Core``, pure (jitted once per loss, method and ``given``)."""
    information = _information(loss_ref, method)

    def run(params, x, y, phi):
        loss = loss_ref()
        flat, unravel = ravel_pytree(params)
        work = curvature.work_dtype(flat.dtype)
        info, grad, scores = information(params, x, y)
        info = info.astype(work)
        grad = grad.astype(work)
        p = flat.size
        finite = jnp.all(jnp.isfinite(info))
        diag = jnp.diagonal(info)
        # units out: a unit diagonal (|diag| keeps the signs, hence the inertia, of a Hessian)
        root = jnp.where(finite & (diag != 0), jnp.sqrt(jnp.abs(diag)), 1.0)
        scaled = jnp.where(finite, info / jnp.outer(root, root), jnp.eye(p, dtype=work))
        lam, vec = jnp.linalg.eigh(0.5 * (scaled + scaled.T))
        tol = jnp.finfo(work).eps * p * jnp.max(jnp.abs(lam))
        not_pd = lam[0] < -tol
        singular = lam[0] <= tol
        inverse = (vec / jnp.where(lam > tol, lam, 1.0)[None, :]) @ vec.T / jnp.outer(root, root)
        invalid = jnp.zeros([], bool)
        if method == "sandwich":
            finite = finite & jnp.all(jnp.isfinite(scores))
            scores = scores.astype(work)
            cov = inverse @ (scores.T @ scores) @ inverse
            phi_used = jnp.ones([], work)
        else:
            if given:
                phi_used = phi.astype(work)
                invalid = ~(jnp.isfinite(phi_used) & (phi_used > 0))
            elif _estimates_dispersion(loss.likelihood):
                dof = _degrees_of_freedom(params, y)[0]
                phi_used = _dispersion_estimate(loss.likelihood, loss.apply(params, x), y, dof)
                phi_used = phi_used.astype(work)
                finite = finite & jnp.isfinite(phi_used)
            else:
                phi_used = jnp.ones([], work)
            cov = phi_used * inverse
        diverging, count, eligible, direction = _divergence(
            loss, flat.astype(work), unravel, x, y, (lam, vec, root, tol, grad)
        )
        flag = jnp.select(
            [invalid, ~finite, not_pd, singular, diverging],
            [Flag.INVALID_DISPERSION, Flag.NON_FINITE, Flag.NOT_POSITIVE_DEFINITE,
             Flag.SINGULAR, Flag.INFINITE_ESTIMATE],
            Flag.OK,
        ).astype(jnp.int32)  # fmt: skip
        missing = (flag != Flag.OK) & (flag != Flag.INFINITE_ESTIMATE)
        cov = jnp.where(missing, jnp.nan, cov).astype(flat.dtype)
        return _Core(cov, phi_used, flag, lam[0], lam[-1], diverging, count, eligible, direction)

    return run


def _evaluate(
    loss: NLL, params: Any, data: Any, method: str, dispersion: Any
) -> tuple[_Core, bool]:
    """Check the arguments, run the (cached, jitted) core; ``(result, whether it is traced)``."""
    method = check_choice("method", method, _METHODS)
    x, y = _check(loss, params, data)
    phi = _check_dispersion(dispersion)
    if phi is None and method != "sandwich" and _estimates_dispersion(loss.likelihood):
        _check_degrees_of_freedom(params, y)
    given = phi is not None
    run = cached(
        loss, ("inference", method, given), lambda: jax.jit(_core(owner_ref(loss), method, given))
    )
    core = run(params, x, y, phi)
    # traced inputs, or concrete ones inside a caller's jax.jit, give a traced result
    return core, isinstance(core.flag, jax.core.Tracer)


# --- the eager reports ------------------------------------------------------------------------


def _names(params: Any, direction: np.ndarray, most: int = 4) -> str:
    """The parameters that ``direction`` (flat, scaled) moves most, by their pytree paths."""
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        where = "params" + jax.tree_util.keystr(path)
        shape = np.shape(leaf)
        names += [where] if shape == () else [f"{where}{list(i)}" for i in np.ndindex(*shape)]
    size = np.abs(direction)
    order = [i for i in np.argsort(-size, kind="stable") if size[i] >= 0.3 * size.max()]
    listed = ", ".join(names[i] for i in order[:most])
    return listed + (", ..." if len(order) > most else "")


def _divergence_message(loss: NLL, params: Any, core: _Core) -> str:
    count, eligible = int(core.boundary), int(core.elements)
    if isinstance(loss.likelihood, Poisson):
        what = (
            f"{count} of the {eligible} zero counts have fitted rates near 0 (P(count > 0) <= "
            f"{_BOUNDARY:g}), e.g. a group whose counts are all 0"
        )
    elif isinstance(loss.likelihood, Categorical):
        what = (
            f"{count} of the {eligible} probabilities of classes other than the observed one are "
            f"fitted <= {_BOUNDARY:g} (complete or quasi-complete separation of the classes)"
        )
    else:
        what = (
            f"{count} of the {eligible} labels are fitted with probability within {_BOUNDARY:g} "
            "of 0 or 1 (complete or quasi-complete separation)"
        )
    return (
        f"the maximum-likelihood estimate does not exist: {what}, and the likelihood still "
        "rises along a direction that only those elements determine, moving mostly "
        f"{_names(params, np.asarray(core.direction))}. Wherever a fit stops, a longer one "
        "moves these parameters further towards infinity. The estimates and their standard "
        "errors are not meaningful: drop or merge what separates the data, or add a penalty "
        "to the loss"
    )


def _report(loss: NLL, params: Any, method: str, core: _Core) -> None:
    """Raise (or warn) on a concrete result (whose dispersion, if given, was checked)."""
    flag = Flag(int(core.flag))
    low, high = float(core.low), float(core.high)
    spectrum = f"scaled eigenvalues from {low:.3g} to {high:.3g}"
    if flag == Flag.NON_FINITE:
        raise ValueError(
            f"the {method} information matrix, the scores or the estimated dispersion is not "
            "finite at these params (the model or the likelihood overflows there), so no "
            "standard errors exist"
        )
    if flag == Flag.NOT_POSITIVE_DEFINITE:
        raise ValueError(
            f"the {method} information matrix is not positive definite ({spectrum}): these "
            "params are not a maximum of the likelihood (it curves upwards along some "
            "direction: a saddle point or a minimum), so the covariance of an estimate does not "
            "apply; fit to convergence first, or use method='fisher'"
        )
    if flag == Flag.SINGULAR:
        cause = (
            "the data do not determine every parameter at these params, so no standard errors "
            "exist; check for redundant parameters or too few examples"
        )
        if bool(core.diverging):
            cause = "no standard errors exist because " + _divergence_message(loss, params, core)
        raise ValueError(f"the {method} information matrix is singular ({spectrum}): {cause}")
    if flag == Flag.INFINITE_ESTIMATE:
        warnings.warn(_divergence_message(loss, params, core), InfiniteEstimateWarning, 3)


# --- the public API ---------------------------------------------------------------------------


def uncertainty(
    loss: NLL,
    params: Any,
    data: Any,
    *,
    method: str = "fisher",
    dispersion: Any = None,
) -> Uncertainty:
    """Covariance, standard errors, dispersion and a :class:`Flag`, without raising on values.

    The pure core behind :func:`covariance` and :func:`standard_errors` (same arguments): a
    function of arrays that works under ``jax.jit`` and ``jax.vmap`` (over fits, data sets or
    dispersions). Where the flag is ``SINGULAR``, ``NOT_POSITIVE_DEFINITE``, ``NON_FINITE``
    or ``INVALID_DISPERSION`` the covariance and standard errors are NaN; with
    ``INFINITE_ESTIMATE`` they are returned, but mean nothing. It raises only for bad
    arguments (a loss not built by :func:`jaxdescent.losses.nll`, mismatched data, an unknown
    ``method``, a concrete ``dispersion`` that is not a finite number > 0, fewer target values
    than parameters when the dispersion is estimated) and never warns.

    Returns:
      An :class:`Uncertainty` ``(covariance, standard_errors, dispersion, flag)``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> loss = jd.losses.nll(lambda w, x: w[0] + w[1] * x, jd.likelihoods.Gaussian())
      >>> xs = jnp.stack([jnp.arange(6.0), jnp.full(6, 2.0)])  # the second x never varies
      >>> ys = jnp.array([[0.1, 1.9, 4.2, 5.8, 8.1, 9.9], [4.1, 3.9, 4.0, 4.2, 3.8, 4.0]])
      >>> fitted = jnp.array([[0.0, 2.0], [2.0, 1.0]])
      >>> u = jax.vmap(lambda w, x, y: jd.inference.uncertainty(loss, w, (x, y)))(fitted, xs, ys)
      >>> [str(jd.inference.Flag(int(f))) for f in u.flag]
      ['OK', 'SINGULAR']
      >>> bool(jnp.isnan(u.standard_errors[1]).all())  # NaN where no covariance exists
      True
    """
    core, _ = _evaluate(loss, params, data, method, dispersion)
    _, unravel = ravel_pytree(params)
    errors = unravel(jnp.sqrt(jnp.diagonal(core.covariance)))
    return Uncertainty(core.covariance, errors, core.dispersion, core.flag)


def dispersion(loss: NLL, params: Any, data: Any) -> jax.Array:
    """The dispersion ``phi`` :func:`covariance` uses by default (see the module docstring).

    ``sum (y - mu)^2 / ((N - p) scale^2)`` for a fixed-scale Gaussian and
    ``(sum |y - mu| / ((N - p) scale))^2`` for a fixed-scale Laplace (its variance is
    ``2 scale^2``: ``phi`` is the estimated scale over the fixed one, squared), with ``N`` the
    number of observed target values (``n k`` for ``k`` outputs per example) and ``p`` the
    number of parameters; else 1. Raises ``ValueError`` when ``N <= p``. Works under JAX
    transformations.
    """
    x, y = _check(loss, params, data)
    lik = loss.likelihood
    if not _estimates_dispersion(lik):
        return jnp.ones([])
    _check_degrees_of_freedom(params, y)
    dof = _degrees_of_freedom(params, y)[0]
    return _dispersion_estimate(lik, loss.apply(params, x), y, dof)


def covariance(
    loss: NLL,
    params: Any,
    data: Any,
    *,
    method: str = "fisher",
    dispersion: Any = None,
) -> jax.Array:
    """The covariance matrix of the fitted ``params`` (flattened, ``ravel_pytree`` order).

    Args:
      loss: a loss built by :func:`jaxdescent.losses.nll`.
      params: the fitted parameters (a pytree), a maximum of the likelihood.
      data: the ``(x, y)`` the loss was fitted on.
      method: ``"fisher"`` (expected information, ``J^T F J``; Gauss-Newton for a Gaussian),
        ``"hessian"`` (observed information) or ``"sandwich"`` (robust, no dispersion).
      dispersion: ``phi``, a finite number > 0; default: estimated for fixed-scale
        Gaussian/Laplace likelihoods, else 1 (see :func:`dispersion`). Ignored by the
        sandwich.

    Returns:
      A ``(p, p)`` array. On concrete inputs, raises ``ValueError`` when the information
      matrix is singular (parameters that the data do not determine), not positive definite
      (params that are not a maximum) or not finite, and warns with
      :class:`InfiniteEstimateWarning` when the MLE does not exist. Under a JAX
      transformation it returns NaN instead of raising (:func:`uncertainty` gives the flag).

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> x = jnp.arange(6.0); y = jnp.array([0.1, 1.9, 4.2, 5.8, 8.1, 9.9])
      >>> loss = jd.losses.nll(lambda w, x: w[0] + w[1] * x, jd.likelihoods.Gaussian())
      >>> w = jd.fit(loss, jnp.zeros(2), jd.optim.gauss_newton(), data=(x, y), steps=5).params
      >>> [round(float(s), 4) for s in jd.inference.standard_errors(loss, w, (x, y))]
      [0.1205, 0.0398]
    """
    core, traced = _evaluate(loss, params, data, method, dispersion)
    if not traced:
        _report(loss, params, method, core)
    return core.covariance


def standard_errors(
    loss: NLL,
    params: Any,
    data: Any,
    *,
    method: str = "fisher",
    dispersion: Any = None,
) -> Any:
    """Standard errors of the fitted ``params``, a pytree shaped like ``params``.

    The square roots of the diagonal of :func:`covariance` (same arguments; it raises and
    warns as that does, and under ``jax.jit`` / ``jax.vmap`` gives NaN where no covariance
    exists):

    >>> import jax, jax.numpy as jnp, jaxdescent as jd
    >>> x = jnp.arange(5.0)
    >>> loss = jd.losses.nll(lambda w, x: w[0] + w[1] * x, jd.likelihoods.Poisson())
    >>> ys = jnp.array([[1.0, 2.0, 2.0, 4.0, 7.0], [3.0, 2.0, 4.0, 2.0, 3.0]])
    >>> fitted = jnp.array([[0.21, 0.39], [1.07, 0.0]])
    >>> se = jax.jit(jax.vmap(lambda w, y: jd.inference.standard_errors(loss, w, (x, y))))
    >>> se(fitted, ys).shape, bool(jnp.isfinite(se(fitted, ys)).all())
    ((2, 2), True)
    """
    core, traced = _evaluate(loss, params, data, method, dispersion)
    if not traced:
        _report(loss, params, method, core)
    _, unravel = ravel_pytree(params)
    return unravel(jnp.sqrt(jnp.diagonal(core.covariance)))
