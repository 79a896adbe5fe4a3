r"""Trust regions and damping: the pieces that :func:`~jaxdescent.optim.newton`,
:func:`~jaxdescent.optim.levenberg_marquardt` and :func:`~jaxdescent.optim.gauss_newton`
share.

Each of these rules makes **one proposal per update**: it solves one linear system for a
step ``d``, measures the loss there and either takes the step or not. A rejected proposal
is a step of its own (the update is zero; the state shrinks the region or raises the
damping), so no update loops over trial steps, and under ``jax.vmap`` no lane waits for
another. The pieces:

- :func:`loss_change`: ``v -> L(v) - L(x)``, for a likelihood loss summed example by
  example over the output-dependent part of the log-likelihood, so constants cancel
  exactly and small decreases keep their precision;
- :func:`judge`: the gain ratio ``rho = actual / predicted`` and the acceptance test, with
  the rounding rule (a decrease promised below the loss's rounding is judged by the
  gradient instead);
- :func:`next_radius`: the radius rule of Nocedal and Wright's Algorithm 4.1;
- :func:`nielsen`: Nielsen's damping rule for Levenberg-Marquardt;
- :func:`running_scale`: Moré's diagonal scaling, a running maximum;
- :func:`no_trial`: the rounding floor below which no proposal is made (the rule's stall);
- :func:`more_sorensen`: the exact trust-region step from an eigendecomposition.

A rule whose update makes no trial leaves its state as it was, so every later update makes
no trial either (for the same params and data): its ``stalled(state)`` test reads that.

References:
  Nocedal and Wright, *Numerical Optimization*, 2nd ed., 2006, Chapter 4. Moré and
  Sorensen, *Computing a trust region step*, SIAM J. Sci. Stat. Comput. 4(3), 1983. Moré,
  *The Levenberg-Marquardt algorithm: implementation and theory*, Lecture Notes in
  Mathematics 630, 1978. Nielsen, *Damping parameter in Marquardt's method*,
  IMM-REP-1999-05, DTU, 1999.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# Algorithm 4.1 of Nocedal and Wright: a ratio below POOR shrinks the region to SHRINK times
# the step's length; above GOOD, with the step on the boundary, the region grows by GROW
POOR = 0.25
GOOD = 0.75
SHRINK = 0.25
GROW = 2.0
# a promised decrease below NOISE * eps * |loss| is within the loss's rounding
NOISE = 16.0
# a region too small for its step's decrease to be measured grows by this factor
QUIET_GROW = 10.0


def check_bound(name: str, value: Any, bound: float, *, below: bool, strict: bool, expected: str):
    """Refuse ``value`` past ``bound`` (``value < bound`` wanted when ``below``, else
    ``value > bound``; ``strict`` excludes the bound itself). A traced value (as
    ``optax.inject_hyperparams`` passes its current values) cannot be read and passes: it was
    checked when it was given as a number."""
    if isinstance(value, jax.core.Tracer):
        return
    v = float(value)
    bad = (v >= bound if strict else v > bound) if below else (v <= bound if strict else v < bound)
    if bad:
        raise ValueError(f"{name} must be {expected}; got {value!r}")


def finite(*arrays: jax.Array) -> jax.Array:
    """Whether every element of every array is finite (one scalar bool)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


class Change(NamedTuple):
    """``fn(v) = L(v) - L(x)`` and ``size``, the magnitude its rounding is relative to; for a
    likelihood loss also ``of_outputs``, the same change from the model's outputs at ``v``."""

    fn: Callable[[jax.Array], jax.Array]
    size: jax.Array
    of_outputs: Callable[[jax.Array], jax.Array] | None = None


def loss_change(
    f: Callable, x: jax.Array, extras: dict[str, Any], unravel: Callable, value=None, out=None
) -> Change:
    """``v -> L(v) - L(x)`` for the flat params ``x``.

    For a loss built by ``jd.losses.nll`` (``extras`` holds ``model_fn``, ``likelihood``
    and ``targets``) the change is summed example by example over
    :meth:`~jaxdescent.likelihoods.Likelihood.log_prob_kernel`, so constants such as the
    Gaussian's ``log(2 pi)/2`` cancel exactly: a decrease of 1e-10 in a loss of 0.92 is
    still measured to full precision, as least-squares codes do with ``||r||^2``. Otherwise
    ``f(v) - f(x)`` (``value``, when given, is ``f(x)``; ``out``, the model's outputs at
    ``x``).
    """
    model_fn, likelihood, targets = (extras.get(k) for k in ("model_fn", "likelihood", "targets"))
    dtype = x.dtype
    if model_fn is not None and likelihood is not None and targets is not None:
        out = model_fn(unravel(x)) if out is None else out
        kernel0 = likelihood.log_prob_kernel(out, targets)
        n = kernel0.shape[0] if kernel0.ndim else 1

        def of_outputs(output):
            kernel = likelihood.log_prob_kernel(output, targets)
            return jnp.asarray(-jnp.sum(kernel - kernel0) / n, dtype)

        def change(v):
            return of_outputs(model_fn(unravel(v)))

        return Change(change, jnp.asarray(jnp.sum(jnp.abs(kernel0)) / n, dtype), of_outputs)
    loss = jnp.asarray(f(x) if value is None else value, dtype)
    return Change(lambda v: jnp.asarray(f(v), dtype) - loss, jnp.abs(loss))


class Judgement(NamedTuple):
    """``accept``: take the proposal; ``rho``: its gain ratio (1 for a step judged by the
    gradient within rounding); ``quiet``: the promised decrease was within rounding;
    ``noise``: that rounding."""

    accept: jax.Array
    rho: jax.Array
    quiet: jax.Array
    noise: jax.Array


def unmeasured(verdict: Judgement, full_decrease: jax.Array) -> jax.Array:
    """A rejected proposal whose decrease was within rounding while the model's own,
    unconstrained step promises far more (``full_decrease > 100 noise``): the region was too
    small to measure the model in (far from the minimum of a loss of 1e19 in float32, say),
    not wrong, so it should grow rather than shrink. Near a minimum the full step's decrease
    is itself within rounding, and the region shrinks as after any rejection."""
    return verdict.quiet & ~verdict.accept & (full_decrease > 100.0 * verdict.noise)


def judge(
    actual: jax.Array,
    predicted: jax.Array,
    eta: jax.Array,
    size: jax.Array,
    step_ok: jax.Array,
    gradient_shrinks: Callable[[], jax.Array],
) -> Judgement:
    r"""Accept a proposal when ``rho = actual / predicted > eta`` and the loss went down.

    A promised decrease within the loss's rounding (``predicted <= 16 eps size``, float32
    near a minimum) makes the ratio noise, and the measured change is noise too, of either
    sign: such a step is taken when its change is within that rounding and
    ``gradient_shrinks()`` (evaluated under ``lax.cond``, only then), so a run converges in
    the gradient as far as the gradient can be resolved. Otherwise (a promised decrease
    above rounding) a step that raises the loss is never taken; one that leaves it exactly
    unchanged is taken when the gradient shrinks.
    """
    dtype = actual.dtype
    noise = NOISE * jnp.finfo(dtype).eps * size
    ok = step_ok & jnp.isfinite(actual) & (predicted > 0)
    rho = actual / jnp.where(predicted > 0, predicted, 1.0)
    quiet = ok & (predicted <= noise)
    by_ratio = ok & ~quiet & (actual > 0) & (rho > eta)
    maybe = ok & ~by_ratio & ((quiet & (actual >= -noise)) | (actual == 0))
    flat = jax.lax.cond(maybe, gradient_shrinks, lambda: jnp.zeros([], bool))
    accept = by_ratio | (maybe & flat)
    rho = jnp.where(maybe & flat, jnp.ones([], dtype), jnp.where(ok, rho, 0.0))
    return Judgement(accept, rho, quiet, noise)


def next_radius(
    radius: jax.Array,
    rho: jax.Array,
    size: jax.Array,
    accept: jax.Array,
    max_radius,
    too_small: jax.Array | bool = False,
) -> jax.Array:
    """Nocedal and Wright's Algorithm 4.1: after a poor step (``rho < 1/4``, or rejected)
    the radius becomes a quarter of the step's length; after a good one (``rho > 3/4``) on
    the boundary it doubles, up to ``max_radius``; otherwise it stays. A region
    :func:`unmeasured` found too small (``too_small``) grows by ``QUIET_GROW``."""
    on_edge = size >= 0.99 * radius
    grown = jnp.where((rho > GOOD) & on_edge, jnp.minimum(GROW * radius, max_radius), radius)
    length = jnp.where(jnp.isfinite(size) & (size > 0), jnp.minimum(size, radius), radius)
    poor = ~accept | (rho < POOR)
    new = jnp.where(poor, SHRINK * length, grown)
    return jnp.where(too_small & on_edge, jnp.minimum(QUIET_GROW * radius, max_radius), new)


def nielsen(
    mu: jax.Array, nu: jax.Array, rho: jax.Array, accept: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""Nielsen's damping rule: after a taken step ``mu <- mu max(1/3, 1 - (2 rho - 1)^3)``
    and ``nu <- 2``; after a rejected one ``mu <- nu mu`` and ``nu <- 2 nu`` (``nu`` at
    most ``2^30``). The caller bounds ``mu``."""
    factor = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * jnp.minimum(rho, 1.0) - 1.0) ** 3)
    new_nu = jnp.where(accept, 2.0, jnp.minimum(2.0 * nu, 2.0**30))
    return jnp.where(accept, mu * factor, mu * nu), new_nu.astype(nu.dtype)


def running_scale(previous: jax.Array, current: jax.Array, first: jax.Array) -> jax.Array:
    """Moré's scaling: the running maximum of ``current`` (restarted when ``first``), with
    zero and non-finite entries replaced by 1."""
    scale = jnp.where(first, current, jnp.maximum(previous, current))
    return jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0).astype(current.dtype)


def no_trial(step_norm: jax.Array, x_norm: jax.Array, x: jax.Array, step: jax.Array) -> jax.Array:
    """Whether a proposal changes nothing and no trial is made.

    A step with ``x + d == x`` in every entry cannot move the params; one whose scaled
    length ``step_norm`` is at most ``eps^2 ||D x||`` (``x_norm``), far below the rounding
    of the params' scale, is not tried either (so a params vector with zeros does not
    shrink its radius towards underflow). The rule then leaves its state as it was, so the
    same proposal comes back at every later update (a fixed point: the run stalled). A step
    that changes the params in their last bits is still tried: near a minimum in float32
    such a step can still shrink the gradient. A non-finite step is not "below rounding":
    the rule handles it as a failed solve.
    """
    eps = jnp.finfo(x.dtype).eps
    floor = jnp.maximum(eps * eps * x_norm, jnp.finfo(x.dtype).tiny)
    return (step_norm <= floor) | jnp.all(x + step == x)  # false for a non-finite step


def more_sorensen(
    lam: jax.Array, q: jax.Array, g: jax.Array, radius: jax.Array, iterations: int = 50
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""``min_z g.z + z.H z / 2`` s.t. ``||z|| <= radius`` from ``H = Q diag(lam) Q^T``.

    The solution is ``z(mu) = -(H + mu I)^{-1} g`` with the smallest ``mu >= max(0,
    -lam_1)`` giving ``||z|| <= radius`` (Moré and Sorensen 1983): ``mu = 0`` when ``H`` is
    positive definite and the Newton step fits; else the root of the secular equation
    ``1/radius - 1/||z(mu)|| = 0``, found by Newton's method from a lower bound (the function
    is concave and increasing in ``mu``, so the iterates do not overshoot). Only when ``H``
    is not positive definite and ``g`` has no component (to rounding) along the lowest
    eigenvector can the root be missing (the *hard case*): the step just past ``-lam_1`` is
    then inside the region, and it is completed along that eigenvector to the boundary.
    Whatever the eigenvector ``g`` lies along, ``||z|| <= radius``.

    Returns ``(z, mu, predicted)``: the step, its shift and the model's decrease
    ``-(g.z + z.H z / 2)``, computed without cancellation.
    """
    dtype = g.dtype
    eps = jnp.finfo(dtype).eps
    gt = q.T @ g
    scale = jnp.maximum(jnp.max(jnp.abs(lam)), jnp.finfo(dtype).tiny)
    flat = jnp.sqrt(eps) * scale  # eigenvalues at or below this count as not positive
    pd = lam[0] > flat
    # the lowest shift considered: 0 for a positive-definite H, else just past -lam_1
    base = jnp.where(pd, 0.0, flat - lam[0])
    gnorm = jnp.linalg.norm(g)

    def norm2(mu):
        return jnp.sum(gt**2 / (lam + mu) ** 2)

    def body(_, mu):
        z2 = norm2(mu)
        znorm = jnp.sqrt(z2)
        cube = jnp.sum(gt**2 / (lam + mu) ** 3)
        step = (1.0 / radius - 1.0 / znorm) * znorm**3 / jnp.where(cube > 0, cube, 1.0)
        moved = jnp.where(jnp.isfinite(step), mu + step, 2.0 * mu + scale)
        return jnp.where((znorm > radius) & (cube > 0), moved, mu)

    inside = norm2(base) <= radius**2
    # ||z(mu)|| >= ||g|| / (lam_n + mu): the root is at least ||g|| / radius - lam_n
    lower = jnp.maximum(base, gnorm / radius - lam[-1])
    mu = jax.lax.fori_loop(0, iterations, body, lower)
    # inside at the lowest shift: the Newton step (H positive definite), or the hard case
    mu = jnp.where(inside, base, mu)
    zt = -gt / (lam + mu)
    # the hard case: the component along the lowest eigenvector takes the rest of the radius
    rest = jnp.sqrt(jnp.maximum(radius**2 - jnp.sum(zt[1:] ** 2), 0.0))
    hard = inside & ~pd
    zt = jnp.where(hard, zt.at[0].set(jnp.where(gt[0] > 0, -rest, rest)), zt)
    z = q @ zt
    # (H + mu I) z = -g gives -(g.z + z.H z / 2) = sum (lam + 2 mu) zt^2 / 2, a sum of
    # non-negative terms; the hard case's completion breaks the identity, so it is direct
    exact = 0.5 * jnp.sum((lam + 2.0 * mu) * zt**2)
    direct = -(jnp.vdot(gt, zt) + 0.5 * jnp.sum(lam * zt**2))
    predicted = jnp.where(hard, direct, exact)
    # last resort (overflow): the steepest-descent step to the boundary
    good = finite(z, mu, predicted)
    cauchy = -g * (radius / jnp.where(gnorm > 0, gnorm, 1.0))
    predicted_cauchy = radius * gnorm - 0.5 * jnp.vdot(cauchy, q @ (lam * (q.T @ cauchy)))
    return (
        jnp.where(good, z, cauchy),
        jnp.where(good, mu, 0.0),
        jnp.where(good, predicted, predicted_cauchy),
    )
