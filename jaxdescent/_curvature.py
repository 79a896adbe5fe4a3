"""Curvature on the flattened params, one home for :mod:`jaxdescent.diagnostics`,
:mod:`jaxdescent.inference` and the Newton rules (:mod:`jaxdescent.optim.second_order`).

A pytree of params is flattened in ``jax.flatten_util.ravel_pytree`` order, ``theta``; the
Hessian ``H = d^2 L / d theta^2`` is then an ``(n, n)`` matrix (``jax.hessian``, forward over
reverse mode, symmetrised as ``(H + H^T) / 2`` against rounding), and a Hessian-vector
product ``v -> H v`` is the linearisation of the gradient (one forward pass over the
reverse-mode gradient: no ``n x n`` matrix). Dense linear algebra runs in at least float32:
LAPACK has no half-precision routines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def work_dtype(dtype) -> jnp.dtype:
    """The dtype curvature is computed in: the float ``dtype`` itself when at least 32 bits,
    else float32 (half precision, and integers for diagnostics)."""
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)


def flatten(value_fn: Callable, params: Any) -> tuple[jax.Array, Callable, Callable]:
    """``(x, f, to_tree)``: ``x`` the flat params in the working dtype, ``f(x)`` the loss
    ``value_fn(params)`` (in that dtype) and ``to_tree`` a flat vector back to the params' tree
    and dtypes (a flat *update* of half-precision params is computed in float32)."""
    flat, unravel = ravel_pytree(params)
    work = work_dtype(flat.dtype)

    def to_tree(v):
        return unravel(v.astype(flat.dtype))

    if work == flat.dtype:
        return flat, lambda v: value_fn(unravel(v)), to_tree
    return flat.astype(work), lambda v: jnp.asarray(value_fn(to_tree(v)), work), to_tree


def symmetric_hessian(f: Callable, x: jax.Array) -> jax.Array:
    """``(H + H^T) / 2`` with ``H = jax.hessian(f)(x)`` for a flat ``x``."""
    h = jax.hessian(f)(x)
    return 0.5 * (h + h.T)


def hvp(f: Callable, x: Any) -> Callable:
    """``v -> H v`` at ``x`` (an array or a pytree), by linearising ``jax.grad(f)``."""
    _, product = jax.linearize(jax.grad(f), x)
    return product
