r"""Conjugate gradients, the one matrix-free solver of the second-order rules.

:func:`conjugate_gradient` solves ``A x = b`` for a symmetric ``A`` given only as a product
``v -> A v``, on flat vectors or pytrees alike: :func:`~jaxdescent.optim.newton_cg` uses it
on Hessian-vector products, :func:`~jaxdescent.optim.gauss_newton` and
:func:`~jaxdescent.optim.levenberg_marquardt` on GGN-vector products (``solver="cg"``). Each
iteration costs one product and a few dot products; ``A`` is never formed.

Starting from ``x_0 = 0`` with residual ``r_0 = b`` and direction ``p_0 = r_0``,

.. math::
   \alpha_k = \frac{r_k^\top r_k}{p_k^\top A p_k}, \quad x_{k+1} = x_k + \alpha_k p_k, \quad
   r_{k+1} = r_k - \alpha_k A p_k, \quad p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}
   {r_k^\top r_k} p_k,

stopping when ``||r_k|| <= tol``, after ``max_steps`` iterations, or on a direction of
non-positive curvature ``p^T A p <= 0`` (Steihaug's rule: ``A`` is not positive definite
there, or singular). The iterates so far are kept: for a positive-definite ``A`` every
iterate is a descent direction of ``x^T A x / 2 - b^T x``.

It is a ``lax.while_loop``: under ``jax.vmap`` it runs until the slowest system has
stopped, so the rules meant for batches of small problems use a dense factorisation instead.

References:
  Hestenes and Stiefel, *Methods of conjugate gradients for solving linear systems*, J. Res.
  Nat. Bur. Standards 49, 1952. Steihaug, *The conjugate gradient method and trust regions in
  large scale optimization*, SIAM J. Numer. Anal. 20(3), 1983. Nocedal and Wright, *Numerical
  Optimization*, 2nd ed., 2006, Algorithms 5.2 and 7.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class CGResult(NamedTuple):
    """``x``: the solution so far; ``iterations``: products used; ``negative``: stopped on a
    direction of non-positive curvature; ``at_once``: that happened on the first iteration
    (``x`` is then zero)."""

    x: Any
    iterations: jax.Array
    negative: jax.Array
    at_once: jax.Array


def _axpy(t, x, y):
    return jax.tree.map(lambda a, b: (jnp.asarray(t, b.dtype) * a + b).astype(b.dtype), x, y)


def _dot(a, b) -> jax.Array:
    return optax.tree.vdot(a, b)


def conjugate_gradient(
    matvec: Callable[[Any], Any], b: Any, *, max_steps: int, tol: jax.Array
) -> CGResult:
    """Conjugate gradients on ``A x = b`` from ``x = 0`` (see the module docstring).

    Args:
      matvec: ``v -> A v`` for ``v`` shaped like ``b``.
      b: the right-hand side, an array or a pytree.
      max_steps: the most iterations (products).
      tol: absolute tolerance on the residual norm ``||b - A x||``.
    """
    dtype = jnp.result_type(*jax.tree.leaves(b))
    tol = jnp.asarray(tol, dtype)
    zero = jax.tree.map(jnp.zeros_like, b)
    rr0 = _dot(b, b).astype(dtype)

    # (i, x, r, p, rr, done, negative)
    def cond(state):
        i, *_, done, _ = state
        return ~done & (i < max_steps)

    def body(state):
        i, x, r, p, rr, _, _ = state
        ap = matvec(p)
        curvature = _dot(p, ap).astype(dtype)
        negative = ~(curvature > 0)  # NaN too
        alpha = jnp.where(negative, 0.0, rr / jnp.where(negative, 1.0, curvature))
        x_new = _axpy(alpha, p, x)
        r_new = _axpy(-alpha, ap, r)
        rr_new = _dot(r_new, r_new).astype(dtype)
        beta = rr_new / jnp.where(rr > 0, rr, 1.0)
        p_new = _axpy(beta, p, r_new)

        def keep(new, old):
            return jax.tree.map(lambda a, c: jnp.where(negative, c, a), new, old)

        done = negative | (jnp.sqrt(rr_new) <= tol)
        return (i + 1, keep(x_new, x), keep(r_new, r), keep(p_new, p),
                jnp.where(negative, rr, rr_new), done, negative)  # fmt: skip

    start = (jnp.zeros([], jnp.int32), zero, b, b, rr0, jnp.sqrt(rr0) <= tol, jnp.zeros([], bool))
    i, x, _, _, _, _, negative = jax.lax.while_loop(cond, body, start)
    return CGResult(x, i, negative, negative & (i == 1))
