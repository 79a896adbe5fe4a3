r"""Curvature on the flattened params, one home for :mod:`jaxdescent.diagnostics`,
:mod:`jaxdescent.inference` and the second-order rules (:mod:`jaxdescent.optim`).

A pytree of params is flattened in ``jax.flatten_util.ravel_pytree`` order, ``theta``; the
Hessian ``H = d^2 L / d theta^2`` is then an ``(n, n)`` matrix (``jax.hessian``, forward over
reverse mode, symmetrised as ``(H + H^T) / 2`` against rounding), and a Hessian-vector
product ``v -> H v`` is the linearisation of the gradient (one forward pass over the
reverse-mode gradient: no ``n x n`` matrix). Dense linear algebra runs in at least float32:
LAPACK has no half-precision routines.

For a loss built by :func:`jaxdescent.losses.nll` (the mean negative log-likelihood of ``n``
examples whose model outputs are ``f(theta)``), the *generalised Gauss-Newton* matrix is

.. math:: G = \frac1n J^\top F J, \qquad J = \partial f / \partial \theta,

with ``F`` the likelihood's Fisher information in output space
(:meth:`jaxdescent.likelihoods.Likelihood.fisher_vp`). :func:`ggn` forms it densely (with
the weighted Jacobian ``A = (F/n)^{1/2} J`` when ``F`` is diagonal) and :func:`ggn_matvec`
applies it matrix-free. :func:`ggn_dense` is the entry point for
:mod:`jaxdescent.inference`. Where the model is affine in the params (:func:`is_affine`)
and the likelihood's link is canonical (:func:`canonical_link`), ``G`` *is* the Hessian of
the loss, so Newton's method can use it at Gauss-Newton's cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex_core
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


# --- is a function affine in its argument? -----------------------------------------------------
#
# A sound, conservative test on the function's jaxpr: every value is marked as constant (does
# not depend on x) or affine in x, primitive by primitive. Structural and linear primitives
# keep affine values affine; products (mul, dot_general) are affine when at most one factor
# depends on x; a division when only its numerator does. Any other primitive that reads a
# value depending on x (exp, max, comparisons, custom derivatives, loops, ...) makes the
# answer False. So True means affine in exact arithmetic; False may be a false negative.

_STRUCTURAL = frozenset(
    {
        "neg", "reduce_sum", "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
        "transpose", "slice", "rev", "copy", "copy_p", "cumsum", "split", "reduce_precision",
        "sharding_constraint", "mesh_cast", "real", "conj",
    }
)  # fmt: skip
_SUMS = frozenset({"add", "add_any", "sub", "concatenate", "pad"})
_PRODUCTS = frozenset({"mul", "dot_general"})
# operands that must not depend on x (indices, predicates): position -> allowed
_INDEXED = {
    "dynamic_slice": lambda i: i == 0,
    "gather": lambda i: i == 0,
    "dynamic_update_slice": lambda i: i in (0, 1),
    "select_n": lambda i: i > 0,
}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def is_affine(fn: Callable, x: jax.Array) -> bool:
    """Whether ``fn(x)`` is affine in ``x`` (``A x + b``), read from its jaxpr at trace time.

    Conservative: ``True`` only when every operation from ``x`` to the outputs is linear or
    structural, or a product with at most one factor depending on ``x`` (see the comment
    above); a model written with ``jnp.exp``, a ``where`` on ``x``, a custom derivative or a
    loop is reported non-affine even where it happens to be linear.
    """
    closed = jax.make_jaxpr(fn)(x)
    return _affine_jaxpr(closed.jaxpr, [True])


def _affine_jaxpr(jaxpr, inputs: list[bool]) -> bool:
    """Propagate "depends on x" through ``jaxpr``; False as soon as a non-affine use occurs."""
    depends: dict[Any, bool] = {}
    for var, dep in zip(jaxpr.invars, inputs):
        depends[var] = dep

    def dep_of(atom) -> bool:
        return isinstance(atom, jex_core.Var) and depends.get(atom, False)

    for eqn in jaxpr.eqns:
        deps = [dep_of(a) for a in eqn.invars]
        if not any(deps):
            for out in eqn.outvars:
                depends[out] = False
            continue
        name = eqn.primitive.name
        floats = all(
            jnp.issubdtype(getattr(o.aval, "dtype", jnp.float32), jnp.inexact) for o in eqn.outvars
        )
        if not floats:
            return False
        if name in _STRUCTURAL or name in _SUMS or name == "convert_element_type":
            ok = True
        elif name in _PRODUCTS:
            ok = sum(deps) <= 1
        elif name == "div":
            ok = not deps[1]
        elif name in _INDEXED:
            allowed = _INDEXED[name]
            ok = all(allowed(i) for i, d in enumerate(deps) if d)
        elif any(k in eqn.params for k in _CALLS) and not name.startswith("custom"):
            inner = next(eqn.params[k] for k in _CALLS if k in eqn.params)
            inner = getattr(inner, "jaxpr", inner)
            ok = _affine_jaxpr(inner, deps)
        else:
            ok = False
        if not ok:
            return False
        for out in eqn.outvars:
            depends[out] = True
    return True


def canonical_link(likelihood: Any, targets: Any = None) -> bool:
    """Whether the likelihood's output-space Hessian equals its Fisher information
    (``H_f = F``) whatever the targets: Bernoulli on logits, Poisson on log-rates,
    Categorical on logits with integer labels, and a Gaussian with a fixed scale (identity
    link). Then, for a model affine in the params, the GGN matrix is the exact Hessian.

    Exact types only: a subclass may change ``log_prob``.
    """
    from jaxdescent import likelihoods as lik

    kind = type(likelihood)
    if kind in (lik.Bernoulli, lik.Poisson):
        return True
    if kind is lik.Gaussian:
        return not likelihood.learn_scale
    if kind is lik.Categorical:
        return targets is not None and jnp.issubdtype(jnp.asarray(targets).dtype, jnp.integer)
    return False


# --- the generalised Gauss-Newton matrix -------------------------------------------------------


class GGN(NamedTuple):
    """The GGN at ``x``: ``gram`` is ``G = J^T F J / n`` (symmetric, ``(p, p)``); ``out`` the
    model's outputs there; ``pullback`` maps a vector ``u`` shaped like ``out`` to
    ``J^T u`` (flat). With a diagonal Fisher and ``weighted=True``, also the weighted
    Jacobian ``A = (F/n)^{1/2} J`` (``(m, p)``, outputs flattened) and the weighted residual
    ``b = (dL/df) / (F/n)^{1/2}``, so that ``G = A^T A`` and the gradient is ``A^T b``."""

    out: jax.Array
    gram: jax.Array
    pullback: Callable
    wjac: jax.Array | None = None
    wres: jax.Array | None = None


def examples(out: jax.Array) -> int:
    """``n``, the number of examples the mean NLL divides by (the outputs' leading size)."""
    return out.shape[0] if out.ndim else 1


def jacobian(out_fn: Callable, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(out, J)``: ``out_fn(x)`` and its Jacobian ``(m, p)``, outputs flattened; forward
    mode (one batched JVP) when ``p <= m``, else reverse mode."""
    m = max(1, math.prod(jax.eval_shape(out_fn, x).shape))
    if x.size <= m:
        out, push = jax.linearize(out_fn, x)
        basis = jnp.eye(x.size, dtype=x.dtype)
        jac = jax.vmap(push, out_axes=-1)(basis).reshape(m, x.size)
    else:
        out, pull = jax.vjp(out_fn, x)
        basis = jnp.eye(m, dtype=out.dtype).reshape(m, *out.shape)
        (jac,) = jax.vmap(pull)(basis)
    return out, jac.astype(x.dtype)


# From this many Jacobian entries on, G is formed as the GGN-vector product applied to the
# identity (a batched JVP and a batched VJP: for a GLM X^T (W X), as IRLS forms it, without
# storing J or the weighted Jacobian); below, from J itself, which is cheaper for the small
# models fitted by the thousand under vmap (a JVP is cheaper than a VJP there).
MATVEC_ENTRIES = 2**16


def ggn(
    out_fn: Callable, likelihood: Any, targets: Any, x: jax.Array, *, weighted: bool = False
) -> GGN:
    """The dense GGN of ``L(x) = mean NLL(out_fn(x), targets)`` at the flat ``x``."""
    dtype = x.dtype
    m = max(1, math.prod(jax.eval_shape(out_fn, x).shape))
    if not weighted and m * x.size >= MATVEC_ENTRIES:
        out, matvec, pullback = _ggn_parts(out_fn, likelihood, targets, x)
        gram = jax.vmap(matvec)(jnp.eye(x.size, dtype=dtype))
        return GGN(out, 0.5 * (gram + gram.T), pullback)
    out, jac = jacobian(out_fn, x)
    n = examples(out)

    def pullback(u):
        return (jac.T @ u.reshape(-1).astype(dtype)).astype(dtype)

    if getattr(likelihood, "diagonal_fisher", False):
        w = likelihood.fisher_vp(out, jnp.ones_like(out), targets).reshape(-1) / n
        root = jnp.sqrt(jnp.maximum(w, 0.0)).astype(dtype)
        wjac = root[:, None] * jac
        gram = wjac.T @ wjac
        if not weighted:
            return GGN(out, gram, pullback)
        dl = jax.grad(lambda o: mean_nll(likelihood, o, targets))(out).reshape(-1)
        safe = root > jnp.finfo(dtype).tiny ** 0.5
        wres = jnp.where(safe, dl / jnp.where(safe, root, 1.0), 0.0).astype(dtype)
        return GGN(out, gram, pullback, wjac, wres)
    columns = jac.T.reshape((x.size, *out.shape))
    fj = jax.vmap(lambda c: likelihood.fisher_vp(out, c, targets))(columns)
    gram = (fj.reshape(x.size, -1) @ jac).astype(dtype) / n
    return GGN(out, 0.5 * (gram + gram.T), pullback)


def _ggn_parts(out_fn, likelihood, targets, x):
    """``(out, v -> G v, u -> J^T u)`` from one linearisation of the model."""
    out, jvp = jax.linearize(out_fn, x)
    vjp = jax.linear_transpose(jvp, x)
    n = examples(out)

    def pullback(u):
        (back,) = vjp(u.astype(out.dtype))
        return back.astype(x.dtype)

    def matvec(v):
        return pullback(likelihood.fisher_vp(out, jvp(v), targets)) / n

    return out, matvec, pullback


def ggn_matvec(
    out_fn: Callable, likelihood: Any, targets: Any, x: jax.Array
) -> tuple[jax.Array, Callable, Callable]:
    """``(out, v -> G v, u -> J^T u)``: the GGN applied matrix-free, one JVP and one VJP of
    the model per product (``jax.linearize`` once, then its transpose)."""
    return _ggn_parts(out_fn, likelihood, targets, x)


def ggn_dense(model_fn: Callable, likelihood: Any, targets: Any, params: Any) -> jax.Array:
    """``G = J^T F J / n`` at ``params`` (any pytree), ``(p, p)`` in ``ravel_pytree`` order.

    ``model_fn(params)`` gives the model's outputs on the ``n`` examples whose ``targets``
    are given; ``likelihood`` is a :class:`jaxdescent.likelihoods.Likelihood`. ``n G`` is
    the expected (Fisher) information of the sample. Pure: works under ``jit`` and ``vmap``.
    """
    x, unravel = ravel_pytree(params)
    return ggn(lambda v: model_fn(unravel(v)), likelihood, targets, x).gram


def mean_nll(likelihood: Any, output: jax.Array, targets: Any) -> jax.Array:
    """The loss of :class:`jaxdescent.losses.NLL` as a function of the model outputs."""
    log_p = likelihood.log_prob(output, targets)
    return -jnp.sum(log_p) / (log_p.shape[0] if log_p.ndim else 1)
