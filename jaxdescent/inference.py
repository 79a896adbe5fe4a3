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
``n - p`` degrees of freedom, ``phi = sum_i (y_i - mu_i)^2 / ((n - p) scale^2)`` (Gaussian),
as statsmodels' GLM and scipy's ``curve_fit`` do; then ``Sigma = s^2 (J^T J)^{-1}`` with
``s^2 = RSS / (n - p)``, the textbook nonlinear least-squares covariance. The sandwich
(Huber-White, "HC0") estimator needs no dispersion and stays valid when the likelihood is
misspecified.

References:
  Seber and Wild, *Nonlinear Regression*, Wiley, 1989, section 2.1 (least squares).
  McCullagh and Nelder, *Generalized Linear Models*, 2nd ed., 1989, section 2.5 (GLMs).
  White, *A heteroskedasticity-consistent covariance matrix estimator*, Econometrica 48,
  1980 (the sandwich).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxdescent import _curvature as curvature
from jaxdescent import data as data_lib
from jaxdescent._checks import check_choice, check_float_tree
from jaxdescent._engine.cache import cached, owner_ref
from jaxdescent.likelihoods import Gaussian, Laplace
from jaxdescent.losses import NLL
from jaxdescent.optim.least_squares import _curvature

__all__ = ["covariance", "dispersion", "standard_errors"]

_METHODS = ("fisher", "hessian", "sandwich")


def _check(loss: Any, params: Any, data: Any) -> tuple[Any, Any]:
    if not isinstance(loss, NLL):
        raise TypeError(
            "loss must be built by jd.losses.nll(apply, likelihood), so that the likelihood "
            f"behind it is known; got {loss!r}"
        )
    check_float_tree("params", params)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"data must be the pair (x, y) the loss was fitted on; got {type(data)}")
    data_lib.check_data(data)
    x, y = (jnp.asarray(a) for a in data)
    return x, y


def dispersion(loss: NLL, params: Any, data: Any) -> jax.Array:
    """The dispersion ``phi`` :func:`covariance` uses by default (see the module docstring).

    ``sum (y - mu)^2 / ((n - p) scale^2)`` for a fixed-scale Gaussian, ``sum |y - mu| /
    ((n - p) scale)`` squared-rescaled for a fixed-scale Laplace (its variance is
    ``2 scale^2``: ``phi = (mean absolute residual / scale)^2`` with ``n - p`` degrees of
    freedom), else 1.
    """
    x, y = _check(loss, params, data)
    lik = loss.likelihood
    if not isinstance(lik, (Gaussian, Laplace)) or lik.learn_scale:
        return jnp.ones([])
    n = int(np.shape(y)[0])
    p = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    if n <= p:
        raise ValueError(
            f"estimating the dispersion needs more examples than parameters; got n={n}, p={p} "
            "(pass dispersion= explicitly)"
        )
    residual = (y - lik.predict(loss.apply(params, x)).reshape(y.shape)).reshape(n, -1)
    if isinstance(lik, Gaussian):
        return jnp.sum(residual**2) / ((n - p) * lik.scale**2)
    return (jnp.sum(jnp.abs(residual)) / ((n - p) * lik.scale)) ** 2


def _information(loss_ref, method: str):
    """``(params, x, y) -> (information, per-example scores or None)``, to be jitted."""

    def run(params, x, y):
        loss = loss_ref()
        flat, unravel = ravel_pytree(params)
        n = y.shape[0]

        def total(v):
            return n * loss(unravel(v), (x, y))

        if method == "fisher":
            grads = unravel(jax.grad(total)(flat))
            c = _curvature(params, grads, lambda p: loss.apply(p, x), loss.likelihood, y, True)
            return n * c.dense, None
        info = curvature.symmetric_hessian(total, flat)
        scores = None
        if method == "sandwich":
            scores = jax.jacrev(lambda v: loss.per_example(unravel(v), (x, y)))(flat)
        return info, scores

    return run


def covariance(
    loss: NLL,
    params: Any,
    data: Any,
    *,
    method: str = "fisher",
    dispersion: float | None = None,
) -> jax.Array:
    """The covariance matrix of the fitted ``params`` (flattened, ``ravel_pytree`` order).

    Args:
      loss: a loss built by :func:`jaxdescent.losses.nll`.
      params: the fitted parameters (a pytree), a maximum of the likelihood.
      data: the ``(x, y)`` the loss was fitted on.
      method: ``"fisher"`` (expected information, ``J^T F J``; Gauss-Newton for a Gaussian),
        ``"hessian"`` (observed information) or ``"sandwich"`` (robust, no dispersion).
      dispersion: ``phi``; default: estimated for fixed-scale Gaussian/Laplace likelihoods,
        else 1 (see :func:`dispersion`). Ignored by the sandwich.

    Returns:
      A ``(p, p)`` array. Raises ``ValueError`` when the information matrix is singular
      (parameters that the data do not determine).

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> x = jnp.arange(6.0); y = jnp.array([0.1, 1.9, 4.2, 5.8, 8.1, 9.9])
      >>> loss = jd.losses.nll(lambda w, x: w[0] + w[1] * x, jd.likelihoods.Gaussian())
      >>> w = jd.fit(loss, jnp.zeros(2), jd.optim.gauss_newton(), data=(x, y), steps=5).params
      >>> [round(float(s), 4) for s in jd.inference.standard_errors(loss, w, (x, y))]
      [0.1205, 0.0398]
    """
    method = check_choice("method", method, _METHODS)
    x, y = _check(loss, params, data)
    flat, _ = ravel_pytree(params)
    info, scores = cached(
        loss, ("inference", method), lambda: jax.jit(_information(owner_ref(loss), method))
    )(params, x, y)
    info = np.asarray(info, dtype=np.float64)
    # judge and invert the information with units taken out (scaled to a unit diagonal), so
    # parameters of very different sizes (Nelson's) do not look singular
    diag = np.diagonal(info)
    ok = np.all(np.isfinite(info)) and np.all(diag > 0)
    root = np.sqrt(np.where(diag > 0, diag, 1.0))
    scaled = info / np.outer(root, root)
    eig = np.linalg.eigvalsh(scaled) if ok else np.array([0.0, 0.0])
    if not ok or eig[0] <= eig[-1] * np.finfo(flat.dtype).eps * info.shape[0]:
        raise ValueError(
            f"the {method} information matrix is singular (scaled eigenvalues from "
            f"{eig[0]:.3g} to {eig[-1]:.3g}): the data do not determine every parameter at "
            "these params, so no standard errors exist; check for redundant parameters or "
            "too few examples"
        )
    inv = np.linalg.inv(scaled) / np.outer(root, root)
    if method == "sandwich":
        meat = np.asarray(scores, np.float64).T @ np.asarray(scores, np.float64)
        return jnp.asarray(inv @ meat @ inv, flat.dtype)
    phi = globals()["dispersion"](loss, params, data) if dispersion is None else dispersion
    return jnp.asarray(float(phi) * inv, flat.dtype)


def standard_errors(
    loss: NLL,
    params: Any,
    data: Any,
    *,
    method: str = "fisher",
    dispersion: float | None = None,
) -> Any:
    """Standard errors of the fitted ``params``, a pytree shaped like ``params``.

    The square roots of the diagonal of :func:`covariance` (same arguments).
    """
    cov = covariance(loss, params, data, method=method, dispersion=dispersion)
    _, unravel = ravel_pytree(params)
    return unravel(jnp.sqrt(jnp.diagonal(cov)))
