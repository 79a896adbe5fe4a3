r"""Curvature from the likelihood: Gauss-Newton (Fisher scoring) and Levenberg-Marquardt.

For a loss built by :func:`jaxdescent.losses.nll`,
``L(theta) = -(1/n) sum_i log p(y_i | f_i(theta))``, the Hessian splits into two terms:

.. math::
   \nabla^2 L = \frac1n J^\top H_f J + \frac1n \sum_{i,k} r_{ik} \nabla^2 f_{ik},
   \qquad r = \nabla_f (-\log p),

with ``J`` the Jacobian of the model outputs ``f`` and ``H_f`` the Hessian of the NLL in output
space. The *generalised Gauss-Newton* (GGN) matrix keeps the first term with ``H_f`` replaced
by the likelihood's Fisher information ``F`` (its expectation over ``y``):

.. math:: G = \frac1n J^\top F J \succeq 0 .

For the Gaussian likelihood ``F = 1/sigma^2`` and ``G`` is classic Gauss-Newton ``J^T J``:
Newton with the second-derivative term (residuals times the model's curvature) dropped, which
is small near a good fit. For a GLM with its canonical link (Bernoulli-logit, Poisson-log)
``H_f = F`` and the model is linear, so ``G`` *is* the Hessian and a Gauss-Newton step is a
Newton step: Fisher scoring, also known as iteratively reweighted least squares. ``G`` is
positive semi-definite by construction, so its steps always descend.

Both rules make **one proposal and one factorisation per update** and no inner loop (in
their default forms): the step is judged by its gain ratio, and a rejected proposal is an
update of its own, zero, after which Gauss-Newton halves its step and Levenberg-Marquardt
raises its damping (:mod:`jaxdescent.optim.trust_region`). Under ``jax.vmap`` of many small
fits every lane then does the same work per update, as in Gpufit and optimistix. The linear
solve is column-scaled and chosen by shape (:mod:`jaxdescent.optim.linear_solve`).

Both rules need the extra arguments ``model_fn``, ``likelihood`` and ``targets`` (and
``value_fn``), which :func:`jaxdescent.fit` passes for an ``nll`` loss; in a hand-written loop
pass ``opt.update(g, state, params, value_fn=lambda p: loss(p, batch),
**loss.rule_extras(batch))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdescent import _curvature as curvature
from jaxdescent._checks import (
    check_choice,
)
from jaxdescent.optim import linear_solve as ls
from jaxdescent.optim import trust_region as tr
from jaxdescent.optim._common import (
    check_flag,
    curvature_rule,
    full_like,
    increment,
    no_step_taken,
    shape_only,
    zero_count,
)
from jaxdescent.optim.cg import conjugate_gradient
from jaxdescent.optim.hyperparams import (
    GAUSS_NEWTON,
    LEVENBERG_MARQUARDT,
    initial_hyperparams,
)
from jaxdescent.optim.line_search import armijo_step, missing_value_fn

__all__ = [
    "GaussNewtonState",
    "LevenbergMarquardtState",
    "gauss_newton",
    "levenberg_marquardt",
]


class GaussNewtonState(NamedTuple):
    """State of :func:`gauss_newton`.

    ``step_size``: the fraction ``t`` of the Gauss-Newton step the next update proposes
    (default form), or the one the last update took (line search); ``accepted``: whether
    the last update moved; ``stuck``: it made no trial (the proposal was below the params'
    rounding; the run can no longer move); ``cg_steps``: CG iterations of the last update
    (0 when dense).
    """

    count: jax.Array
    step_size: jax.Array
    accepted: jax.Array
    stuck: jax.Array
    cg_steps: jax.Array
    hyperparams: dict[str, jax.Array]


class LevenbergMarquardtState(NamedTuple):
    """State of :func:`levenberg_marquardt`.

    ``damping``: the ``mu`` the next update solves with; ``radius``: the trust radius ``Delta`` on
    ``||D d||`` it uses (infinite: none); ``scale``: Moré's diagonal scaling ``D`` (the running
    maximum of the Jacobian's weighted column norms; ones when unscaled or matrix free); ``rho``:
    the last proposal's gain ratio; ``accepted``: whether the last update moved; ``stuck``: it left
    params and state as they were (no trial: the proposal could not change the params), so
    every later update does the same; ``cg_steps``: CG iterations of the last update.
    """

    count: jax.Array
    damping: jax.Array
    radius: jax.Array
    scale: jax.Array
    rho: jax.Array
    accepted: jax.Array
    stuck: jax.Array
    cg_steps: jax.Array
    hyperparams: dict[str, jax.Array]


# --- the shared pieces -----------------------------------------------------------------------


def _extras(rule: str, value_fn, model_fn, likelihood, targets) -> None:
    if value_fn is None:
        raise missing_value_fn(rule)
    if model_fn is None or likelihood is None or targets is None:
        raise ValueError(
            f"{rule} needs the model and likelihood behind the loss: build the loss with "
            "jd.losses.nll(apply, likelihood) and pass data to jd.fit, or pass "
            "model_fn=, likelihood= and targets= to update() (loss.rule_extras(batch))"
        )


class _Flat(NamedTuple):
    x: jax.Array  # the params, flat, in the working dtype (at least float32)
    g: jax.Array  # the gradient, likewise
    to_tree: Callable  # a flat update -> the params' tree and dtypes
    out_fn: Callable  # flat params -> the model's outputs on the batch


def _flat(params, grads, model_fn) -> _Flat:
    flat, unravel = ravel_pytree(params)
    work = curvature.work_dtype(flat.dtype)

    def to_tree(v):
        return unravel(v.astype(flat.dtype))

    return _Flat(
        flat.astype(work),
        ravel_pytree(grads)[0].astype(work),
        to_tree,
        lambda v: model_fn(to_tree(v)),
    )


def _num_params(params) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def _init_dtype(params) -> jnp.dtype:
    leaves = jax.tree.leaves(params)
    return curvature.work_dtype(jnp.result_type(*leaves))


def _const(shape: tuple[int, ...], value, dtype) -> jax.Array:
    """A constant state leaf, made on the host (:func:`jaxdescent.optim._common.full_like`)."""
    return full_like(np.zeros(shape, dtype), value)


class _Proposal(NamedTuple):
    """A solved system: the step ``d``, its scaled length, the scale ``s`` (``z = s d``),
    ``dGd = d.G d``, CG iterations and the model's outputs."""

    d: jax.Array
    z_norm: jax.Array
    s: jax.Array
    dgd: jax.Array
    cg_steps: jax.Array
    out: jax.Array  # the model's outputs at the params
    pullback: Callable  # u -> J^T u at the params


def _trial(fl: _Flat, extras, change: tr.Change, pullback, trial, g):
    """``(actual decrease, gradient test)`` at ``trial``, from one evaluation of the model
    there. The test (run only for a decrease promised within rounding) takes the gradient
    there as ``J^T dL/df`` with ``J`` the Jacobian at the params, already at hand: in that
    regime the step is within rounding of the params' own scale, so ``J`` has not moved."""
    likelihood, targets = extras["likelihood"], extras["targets"]
    out = fl.out_fn(trial)
    actual = -change.of_outputs(out)

    def gradient_shrinks():
        dl = jax.grad(lambda o: curvature.mean_nll(likelihood, o, targets))(out)
        g_new = pullback(dl)
        return tr.finite(g_new) & (jnp.vdot(g_new, g_new) < jnp.vdot(g, g))

    return actual, gradient_shrinks


def _cg_tol(hp, cg_default) -> jax.Array:
    return hp["cg_tol"] if "cg_tol" in hp else cg_default


# --- Gauss-Newton ----------------------------------------------------------------------------


def _gn_values(line_search, damping, solver, max_cg_steps, cg_tol, shrink, c1, max_ls):
    """Check :func:`gauss_newton`'s arguments; returns ``(runtime, static)``."""
    if line_search is not None and not isinstance(line_search, bool):
        raise TypeError(f"line_search must be None, True or False; got {line_search!r}")
    static = GAUSS_NEWTON.check(
        damping=damping, max_cg_steps=max_cg_steps, cg_tol=cg_tol, shrink=shrink, c1=c1,
        max_line_search_steps=max_ls,
    ).static  # fmt: skip
    solver = check_choice("solver", solver, ls.SOLVERS)
    if solver in ("dense", "svd"):
        for name, value in (("max_cg_steps", max_cg_steps), ("cg_tol", cg_tol)):
            if value is not None:
                raise ValueError(f"{name} is read only by solver='cg' (or 'auto'); got {value!r}")
    if line_search is not True and max_ls is not None:
        raise ValueError(f"max_line_search_steps is read only by line_search=True; got {max_ls!r}")
    if line_search is False and (shrink is not None or c1 is not None):
        raise ValueError("shrink and c1 are not read by line_search=False (full steps)")
    cg_steps = 50 if max_cg_steps is None else static["max_cg_steps"]
    cg_tol = 1e-6 if cg_tol is None else cg_tol
    shrink = 0.5 if shrink is None else shrink
    c1 = 1e-4 if c1 is None else c1
    max_ls = 50 if max_ls is None else static["max_line_search_steps"]
    runtime = {"damping": damping}
    if line_search is not False:
        runtime.update(shrink=shrink, c1=c1)
    return runtime, {"solver": solver, "cg_tol": cg_tol, "max_cg_steps": cg_steps,
                     "max_ls": max_ls}  # fmt: skip


def _gn_direction(fl: _Flat, extras, hp, kind: str, static) -> _Proposal:
    """The Gauss-Newton step ``d`` with ``(G + lambda diag(G)) d = -g`` (dense, SVD), or
    ``(G + lambda r I) d = -g`` with ``r = g.G g / g.g`` (CG)."""
    likelihood, targets = extras["likelihood"], extras["targets"]
    x, g = fl.x, fl.g
    dtype = x.dtype
    lam = hp["damping"].astype(dtype)
    if kind == "cg":
        out, matvec, pullback = curvature.ggn_matvec(fl.out_fn, likelihood, targets, x)
        gg = jnp.vdot(g, g)
        rayleigh = jnp.vdot(g, matvec(g)) / jnp.where(gg > 0, gg, 1.0)
        tol = _cg_tol(hp, static["cg_tol"]).astype(dtype) * jnp.sqrt(gg)
        sol = conjugate_gradient(
            lambda v: matvec(v) + lam * rayleigh * v, -g, max_steps=static["max_cg_steps"],
            tol=tol,
        )  # fmt: skip
        gradient_step = -g / jnp.where(rayleigh > 0, rayleigh, 1.0)
        d, _ = ls.descent_or_gradient(sol.x, -gradient_step)
        return _Proposal(d, jnp.linalg.norm(d), jnp.ones_like(x), jnp.vdot(d, matvec(d)),
                         sol.iterations, out, pullback)  # fmt: skip
    system = curvature.ggn(fl.out_fn, likelihood, targets, x, weighted=kind == "svd")
    s = ls.column_scale(system.gram)
    gram_s, g_s = ls.scaled(system.gram, g, s)
    wjac_s = None if system.wjac is None else system.wjac / s[None, :]
    damping = lam * jnp.diagonal(gram_s)
    z = ls.solve_scaled(kind, gram_s, g_s, damping, wjac_s, system.wres).z
    z, _ = ls.descent_or_gradient(z, g_s)
    zero = jnp.zeros([], jnp.int32)
    return _Proposal(z / s, jnp.linalg.norm(z), s, jnp.vdot(z, gram_s @ z), zero, system.out,
                     system.pullback)  # fmt: skip


def gauss_newton(
    line_search: bool | None = None,
    *,
    damping: float = 0.0,
    solver: str = "auto",
    max_cg_steps: int | None = None,
    cg_tol: float | None = None,
    shrink: float | None = None,
    c1: float | None = None,
    max_line_search_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Generalised Gauss-Newton from the likelihood: Fisher scoring, IRLS, Gauss-Newton.

    .. math::
       (G + \lambda\, \mathrm{diag}\, G)\, d = -g, \quad G = \frac1n J^\top F J, \qquad
       \theta_{t+1} = \theta_t + t\, d

    with ``J`` the Jacobian of the model's outputs on the batch, ``F`` the likelihood's Fisher
    information in output space (:meth:`jaxdescent.likelihoods.Likelihood.fisher_vp`: Gaussian
    ``1/sigma^2``, Bernoulli ``p(1-p)``, Categorical ``diag(p) - p p^T``, Poisson the rate)
    and ``lambda`` = ``damping`` (Marquardt's relative form: invariant to the parameters'
    units). For the Gaussian likelihood this is Gauss-Newton for nonlinear least squares; for
    a GLM with canonical link it equals Newton's method (Fisher scoring = IRLS).

    Each update makes **one proposal**: the step ``t d``, taken when the loss falls by at
    least ``c1`` times the decrease the quadratic model promises (``rho > c1``). After a
    taken step ``t`` grows back towards 1 (``t / shrink``); after a rejected one the update
    is zero and the next proposes ``shrink t`` (a backtracking search spread over updates:
    no inner loop, one factorisation per update, the same work in every lane under
    ``vmap``). A GLM or a linear least-squares problem takes the full step every time. Where the
    promised decrease is within the loss's rounding (float32 near the minimum), the ratio is not
    read: a step that keeps the loss within its rounding and shrinks the gradient is taken (and a
    shortened step is lengthened again when the full one promises a measurable decrease). Once ``t
    d`` cannot change the params no trial is made, and :func:`jaxdescent.fit` ends a full-batch run
    ``STALLED``. ``line_search=True`` instead backtracks (Armijo) within each update until a step
    is found (for mini-batches, where the next update sees other data); ``line_search=False`` takes
    ``d`` in full, unguarded.

    The system is solved in column-scaled coordinates (``solver``, see
    :mod:`jaxdescent.optim.linear_solve`): ``"dense"``, one Cholesky factorisation of the
    scaled ``G`` with a tiny shift; ``"svd"``, the safe path (minimum-norm steps, no squared
    condition number); ``"cg"``, conjugate gradients on GGN-vector products, never forming
    ``G``; ``"auto"``, dense up to :func:`~jaxdescent.optim.linear_solve.dense_limit`
    parameters (by a cost model with per-backend constants), else CG. A direction that
    cannot be computed (a failed factorisation) becomes the scaled gradient step, so the
    update is never non-finite from finite inputs.

    Args:
      line_search: ``None`` (default): one proposal per update, as above; ``True``: Armijo
        backtracking within each update; ``False``: full steps.
      damping: ``lambda >= 0``, relative to ``diag(G)`` (to the Rayleigh quotient
        ``g.G g / g.g`` for CG); a runtime hyperparameter, in the state.
      solver: ``"auto"``, ``"dense"``, ``"svd"`` or ``"cg"``.
      max_cg_steps, cg_tol: CG's iteration limit (default 50; static) and relative
        residual tolerance in ``(0, 1]`` (default 1e-6; runtime); CG solvers only.
      shrink: the step's factor after a rejected proposal, in ``(0, 1)`` (default 0.5,
        runtime; not with ``line_search=False``).
      c1: the smallest gain ratio (sufficient decrease) accepted, in ``(0, 1)`` (default
        1e-4, runtime; not with ``line_search=False``).
      max_line_search_steps: most trial steps per update (``line_search=True`` only;
        default 50).

    Returns:
      An optax transformation with state :class:`GaussNewtonState`. ``update`` needs
      ``value_fn``, ``model_fn``, ``likelihood`` and ``targets`` (``jd.fit`` passes them for a
      loss built by :func:`jaxdescent.losses.nll`).

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> x = jnp.array([0.0, 1.0, 2.0, 3.0]); y = jnp.array([1.0, 2.7, 7.4, 20.1])
      >>> loss = jd.losses.nll(lambda b, x: b[0] * jnp.exp(b[1] * x), jd.likelihoods.Gaussian())
      >>> res = jd.fit(loss, jnp.array([1.0, 0.5]), jd.optim.gauss_newton(), data=(x, y),
      ...              steps=50, tol=1e-6)
      >>> [round(float(v), 3) for v in res.params]  # scipy's curve_fit: 0.998, 1.001
      [0.998, 1.001]

    References:
      McCullagh and Nelder, *Generalized Linear Models*, 2nd ed., 1989, section 2.5 (IRLS).
      Schraudolph, *Fast curvature matrix-vector products for second-order gradient
      descent*, Neural Computation 14(7), 2002 (the generalised Gauss-Newton matrix).
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., 2006, section 10.3.
    """
    runtime, static = _gn_values(line_search, damping, solver, max_cg_steps, cg_tol, shrink,
                                 c1, max_line_search_steps)  # fmt: skip

    @shape_only
    def init(params):
        dtype = _init_dtype(params)
        values = dict(runtime)
        if ls.choose_solver(static["solver"], _num_params(params)) == "cg":
            values["cg_tol"] = static["cg_tol"]
        return GaussNewtonState(
            count=zero_count(),
            step_size=_const((), 1.0, dtype),
            accepted=_const((), False, bool),
            stuck=_const((), False, bool),
            cg_steps=zero_count(),
            hyperparams=initial_hyperparams(values, params),
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, model_fn=None,
               likelihood=None, targets=None, **extra):  # fmt: skip
        del extra
        _extras("gauss_newton", value_fn, model_fn, likelihood, targets)
        extras = {"model_fn": model_fn, "likelihood": likelihood, "targets": targets}
        fl = _flat(params, grads, model_fn)
        x, g, dtype = fl.x, fl.g, fl.x.dtype
        hp = {k: v.astype(dtype) for k, v in state.hyperparams.items()}
        kind = ls.choose_solver(static["solver"], x.size)
        prop = _gn_direction(fl, extras, hp, kind, static)
        d = prop.d
        change = tr.loss_change(lambda v: value_fn(fl.to_tree(v)), x, extras, fl.to_tree,
                                out=prop.out)  # fmt: skip
        if line_search is False:
            step, t, moved, stuck = d, jnp.ones([], dtype), jnp.ones([], bool), state.stuck
        elif line_search:
            kw = {"shrink": hp["shrink"], "c1": hp["c1"], "max_steps": static["max_ls"]}
            zero = jnp.zeros([], dtype)  # change.fn measures from the current loss
            t, found = armijo_step(change.fn, x, d, zero, jnp.vdot(g, d), **kw)
            tg, _ = armijo_step(change.fn, x, -g, zero, -jnp.vdot(g, g), active=~found, **kw)
            step = jnp.where(found, t * d, tg * -g)
            t = jnp.where(found, t, tg)
            moved, stuck = t > 0, t == 0
        else:
            t = jnp.where(state.count == 0, 1.0, state.step_size.astype(dtype))
            step = t * d
            trial = x + step
            x_norm = jnp.linalg.norm(prop.s * x)
            skip = tr.no_trial(t * prop.z_norm, x_norm, x, step)
            predicted = -t * jnp.vdot(g, d) - 0.5 * t * t * prop.dgd
            actual, gradient_shrinks = _trial(fl, extras, change, prop.pullback, trial, g)
            verdict = tr.judge(actual, predicted, hp["c1"], change.size, tr.finite(step),
                               gradient_shrinks)  # fmt: skip
            moved = verdict.accept & ~skip
            grown = jnp.minimum(1.0, t / hp["shrink"])
            # a shortened step whose decrease was within rounding while the full step's is
            # not could not be judged: the next proposal is longer, not shorter
            full = -jnp.vdot(g, d) - 0.5 * prop.dgd
            unmeasured = tr.unmeasured(verdict, full) & (t < 1.0)
            t = jnp.where(skip, t, jnp.where(moved | unmeasured, grown, t * hp["shrink"]))
            step = jnp.where(moved, step, 0.0)
            stuck = skip
        step = jnp.where(tr.finite(step), step, jnp.zeros_like(step))
        new_state = GaussNewtonState(
            count=increment(state.count),
            step_size=t.astype(state.step_size.dtype),
            accepted=moved,
            stuck=stuck,
            cg_steps=prop.cg_steps,
            hyperparams=state.hyperparams,
        )
        return fl.to_tree(step), new_state

    if line_search is None:
        stalled = _stuck
    elif line_search:
        stalled = no_step_taken
    else:
        stalled = None
    return curvature_rule(init, update, stalled=stalled)


def _stuck(state) -> jax.Array:
    """The stall test of the one-proposal rules: the last update left params and state as
    they were (:func:`jaxdescent.optim.trust_region.no_trial`), so every later one does."""
    return (state.count > 0) & state.stuck


# --- Levenberg-Marquardt ---------------------------------------------------------------------


def _lm_values(initial_damping, initial_radius, scaled, geodesic, solver, eta, max_cg_steps,
               cg_tol):  # fmt: skip
    """Check :func:`levenberg_marquardt`'s arguments; returns ``(runtime, static)``."""
    static = LEVENBERG_MARQUARDT.check(
        initial_damping=initial_damping, initial_radius=initial_radius, eta=eta,
        max_cg_steps=max_cg_steps, cg_tol=cg_tol,
    ).static  # fmt: skip
    check_flag("scaled", scaled)
    check_flag("geodesic", geodesic)
    solver = check_choice("solver", solver, ls.SOLVERS)
    if solver in ("dense", "svd"):
        for name, value in (("max_cg_steps", max_cg_steps), ("cg_tol", cg_tol)):
            if value is not None:
                raise ValueError(f"{name} is read only by solver='cg' (or 'auto'); got {value!r}")
    cg_steps = 50 if max_cg_steps is None else static["max_cg_steps"]
    cg_tol = 1e-8 if cg_tol is None else cg_tol
    runtime = {"initial_damping": initial_damping, "initial_radius": initial_radius, "eta": eta}
    return runtime, {"solver": solver, "cg_tol": cg_tol, "max_cg_steps": cg_steps,
                     "scaled": scaled, "geodesic": geodesic}  # fmt: skip


# a gain ratio above this: the quadratic model held (the radius may open to the proposal)
VERY_GOOD = 0.9


class _Damped(NamedTuple):
    """One Levenberg-Marquardt solve: ``z`` in the radius's metric (``z = D d``), ``d``,
    ``z.(G_s + mu)^{-1} z`` (for the secular update), ``z.G_s z``, Moré's scale ``D``, the
    damping's unit ``top`` and CG iterations."""

    z: jax.Array
    d: jax.Array
    inverse_norm2: jax.Array
    zgz: jax.Array
    scale: jax.Array
    top: jax.Array
    cg_steps: jax.Array
    out: jax.Array
    pullback: Callable


def _first_damping(state, hp, top, dtype):
    return jnp.where(state.count == 0, hp["initial_damping"] * top, state.damping.astype(dtype))


def _lm_dense(fl: _Flat, extras, state, hp, kind, static) -> _Damped:
    """``(G + mu D^2) d = -g``, solved in the coordinates ``z = D d`` with ``D`` Moré's
    scaling (``scaled=True``), else ``D = I`` (solved in column-scaled coordinates for
    precision, then mapped back)."""
    x, g, dtype = fl.x, fl.g, fl.x.dtype
    system = curvature.ggn(fl.out_fn, extras["likelihood"], extras["targets"], x,
                           weighted=kind == "svd")  # fmt: skip
    c = ls.column_scale(system.gram)
    if static["scaled"]:
        scale = tr.running_scale(state.scale.astype(dtype), c, state.count == 0)
        s, e = scale, jnp.ones_like(x)
    else:
        scale, s, e = jnp.ones_like(x), c, 1.0 / (c * c)
    gram_s, g_s = ls.scaled(system.gram, g, s)
    wjac_s = None if system.wjac is None else system.wjac / s[None, :]
    # mu relative to the largest scaled curvature, so initial_damping is unit-free
    top = jnp.max(jnp.diagonal(gram_s) / e)
    top = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
    mu = _first_damping(state, hp, top, dtype)
    solved = ls.solve_scaled(kind, gram_s, g_s, mu * e, wjac_s, system.wres)
    d = solved.z / s
    if static["geodesic"]:
        rhs = _second_order_rhs(fl, extras, d) / s
        accel = ls.solve_scaled(kind, gram_s, -rhs, mu * e).z / s
        keep = tr.finite(accel) & (2.0 * jnp.linalg.norm(scale * accel)
                                   <= 0.75 * jnp.linalg.norm(scale * d))  # fmt: skip
        d = d + jnp.where(keep, 0.5 * accel, 0.0)
    zgz = jnp.vdot(d * s, gram_s @ (d * s))
    if static["scaled"]:  # the solve's coordinates are the radius's: z = D d
        inverse_norm2 = solved.inverse_norm2
    else:  # D = I: z.(G + mu I)^{-1} z from the Rayleigh quotient of G + mu I along d
        dd = jnp.vdot(d, d)
        inverse_norm2 = dd * dd / jnp.where(zgz + mu * dd > 0, zgz + mu * dd, 1.0)
    zero = jnp.zeros([], jnp.int32)
    return _Damped(scale * d, d, inverse_norm2, zgz, scale, top, zero, system.out,
                   system.pullback)  # fmt: skip


def _lm_cg(fl: _Flat, extras, state, hp, static) -> _Damped:
    """``(G + mu I) d = -g`` by CG; ``mu`` starts at ``initial_damping`` times the Rayleigh
    quotient ``g.G g / g.g``."""
    x, g, dtype = fl.x, fl.g, fl.x.dtype
    out, matvec, pullback = curvature.ggn_matvec(fl.out_fn, extras["likelihood"],
                                                 extras["targets"], x)  # fmt: skip
    gg = jnp.vdot(g, g)
    top = jnp.vdot(g, matvec(g)) / jnp.where(gg > 0, gg, 1.0)
    top = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
    mu = _first_damping(state, hp, top, dtype)
    tol = _cg_tol(hp, static["cg_tol"]).astype(dtype) * jnp.sqrt(gg)
    sol = conjugate_gradient(lambda v: matvec(v) + mu * v, -g,
                             max_steps=static["max_cg_steps"], tol=tol)  # fmt: skip
    d = sol.x
    if static["geodesic"]:
        rhs = _second_order_rhs(fl, extras, d)
        accel = conjugate_gradient(lambda v: matvec(v) + mu * v, rhs,
                                   max_steps=static["max_cg_steps"], tol=tol).x  # fmt: skip
        keep = tr.finite(accel) & (2.0 * jnp.linalg.norm(accel) <= 0.75 * jnp.linalg.norm(d))
        d = d + jnp.where(keep, 0.5 * accel, 0.0)
    dgd = jnp.vdot(d, matvec(d))
    dd = jnp.vdot(d, d)
    # z.(G + mu I)^{-1} z, from the Rayleigh quotient of G + mu I along d (exact when d is
    # an eigenvector; CG gives no factor to solve with)
    inverse_norm2 = dd * dd / jnp.where(dgd + mu * dd > 0, dgd + mu * dd, 1.0)
    return _Damped(d, d, inverse_norm2, dgd, jnp.ones_like(x), top, sol.iterations, out,
                   pullback)  # fmt: skip


def _second_order_rhs(fl: _Flat, extras, d) -> jax.Array:
    """``-J^T F r'' / n``, with ``r''`` the model's second directional derivative along
    ``d``: the right-hand side of the geodesic acceleration (Transtrum and Sethna)."""
    x = fl.x
    out = fl.out_fn(x)

    def directional(v):
        return jax.jvp(fl.out_fn, (v,), (d,))[1]

    second = jax.jvp(directional, (x,), (d,))[1]
    _, vjp = jax.vjp(fl.out_fn, x)
    (back,) = vjp(extras["likelihood"].fisher_vp(out, second, extras["targets"]))
    return -back.astype(x.dtype) / curvature.examples(out)


def _secular_damping(mu, z_norm, inverse_norm2, radius, top) -> jax.Array:
    r"""One Newton step on Moré's secular equation ``1/Delta - 1/||z(mu)|| = 0`` from the
    damping just used: ``mu + (||z|| / ||q||)^2 (||z|| - Delta) / Delta`` with
    ``||q||^2 = z.(G + mu D^2)^{-1} z`` (Nocedal and Wright, eq. 4.44), so the next proposal
    lands about on the boundary of the next region. The function is concave and increasing,
    so from a damping that gave too long a step the update does not overshoot."""
    ratio = z_norm * z_norm / jnp.where(inverse_norm2 > 0, inverse_norm2, 1.0)
    new = mu + ratio * (z_norm / radius - 1.0)  # an infinite radius: mu - ratio
    new = jnp.where(jnp.isfinite(new), new, mu)
    eps = jnp.finfo(mu.dtype).eps
    return jnp.clip(new, eps * top, top / (eps * eps))


def levenberg_marquardt(
    initial_damping: float = 1e-3,
    *,
    initial_radius: float = 1.0,
    scaled: bool = True,
    geodesic: bool = False,
    solver: str = "auto",
    eta: float = 1e-4,
    max_cg_steps: int | None = None,
    cg_tol: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Levenberg-Marquardt: Gauss-Newton with adaptive damping, for nonlinear least squares.

    .. math::
       (G + \mu D^2)\, z' = -g, \qquad d = z' \min(1, \Delta / \|D z'\|), \qquad
       \rho = \frac{L(\theta) - L(\theta + d)}{-(g^\top d + \tfrac12 d^\top G d)}

    with ``G = J^T F J / n`` the generalised Gauss-Newton matrix (:func:`gauss_newton`) and
    ``D`` Moré's scaling, the running maximum of the Jacobian's weighted column norms
    ``sqrt(diag G)`` (``scaled=True``; the identity otherwise), which makes the method
    invariant to the units of each parameter. It is Moré's trust-region form with **one
    proposal and one factorisation per update**: the damped step ``z'`` is solved once
    (Cholesky of the column-scaled system), pulled back to the trust radius ``Delta`` if it
    is longer (by more than 10%, as MINPACK allows), and taken when the loss falls with
    ``rho > eta``. The radius then follows Moré's rule (at least twice the step after
    ``rho > 3/4``, or ``rho >= 1/4`` for an undamped step; after a step the quadratic model
    predicted well, up to the undamped step's length, at most ten times the step; at most
    half the radius after ``rho < 1/4``; a quarter of the step after a rejection) and ``mu``
    takes one Newton step on the secular equation ``||D z'(mu)|| = Delta`` towards the new
    radius, so the damping tracks the radius across updates instead of in an inner loop. A
    rejected proposal is an update of its own (zero), as in Gpufit and optimistix: under
    ``vmap`` every fit does the same work per update.

    The first ``mu`` is ``initial_damping`` times the largest scaled curvature
    ``max(diag(G) / D^2)``; the first radius ``initial_radius * ||D theta_0||``, unbounded
    from ``theta_0 = 0`` (so a linear problem from zeros is solved in one or two steps).
    Where the promised decrease is within the loss's rounding (float32), the gain ratio is
    noise and is not read: near a minimum a step that keeps the loss within its rounding
    and shrinks the gradient is taken, so the run converges as far as the gradient can be
    resolved; far from one (a loss of 1e19, a region too small to measure its step in) the
    region grows instead. Otherwise a step that raises the loss is never taken. When the
    proposal cannot change the params (``x + d == x``), the update leaves params and state
    as they were: every later update would do the same, and :func:`jaxdescent.fit` ends a
    full-batch run ``STALLED``. A failed factorisation is a rejection with ten times the
    damping.

    With ``geodesic=True`` each step adds Transtrum and Sethna's second-order correction
    ``a/2``, ``(G + mu D^2) a = -J^T F r''/n`` with ``r''`` the model's second directional
    derivative along ``d``, when ``2||D a|| <= 0.75 ||D d||``; it helps on long curved
    valleys (one more solve).

    Args:
      initial_damping: ``tau > 0``, the first ``mu`` relative to the largest scaled
        curvature (a runtime hyperparameter, in the state; read by the first update).
      initial_radius: the first radius relative to ``||D theta_0||`` (runtime; first update).
      scaled: Moré's diagonal scaling ``D``; ``False`` uses ``D = I`` (Levenberg's form).
      geodesic: add the geodesic acceleration term.
      solver: ``"auto"``, ``"dense"`` (Cholesky), ``"svd"`` (the safe path) or ``"cg"``
        (matrix-free, ``D = I``, the first ``mu`` relative to ``g.G g / g.g``); see
        :func:`gauss_newton` and :mod:`jaxdescent.optim.linear_solve`.
      eta: smallest gain ratio accepted, in ``[0, 1/4)`` (runtime).
      max_cg_steps, cg_tol: CG's iteration limit (default 50; static) and relative
        residual tolerance in ``(0, 1]`` (default 1e-8; runtime); CG solvers only.

    Returns:
      An optax transformation with state :class:`LevenbergMarquardtState`; ``update`` needs
      ``value_fn``, ``model_fn``, ``likelihood`` and ``targets`` (``jd.fit`` passes them for
      a loss built by :func:`jaxdescent.losses.nll`).

    Example:
      NIST's Misra1a (its data inline), from NIST's far start, to the certified values:

      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> x = [77.6, 114.9, 141.1, 190.8, 239.9, 289.0, 332.8, 378.4, 434.8, 477.3,
      ...      536.8, 593.1, 689.1, 760.0]
      >>> y = [10.07, 14.73, 17.94, 23.93, 29.61, 35.18, 40.02, 44.82, 50.76, 55.05,
      ...      61.01, 66.40, 75.47, 81.78]
      >>> model = lambda b, x: b[0] * (1 - jnp.exp(-b[1] * x))
      >>> with jax.enable_x64(True):
      ...     loss = jd.losses.nll(model, jd.likelihoods.Gaussian())
      ...     res = jd.fit(loss, jnp.array([500.0, 1e-4]), jd.optim.levenberg_marquardt(),
      ...                  data=(jnp.array(x), jnp.array(y)), steps=500, tol=1e-6)
      ...     lre = jd.nist.lre(res.params, jnp.array([2.3894212918e02, 5.5015643181e-04]))
      >>> res.success, bool(lre >= 6)
      (True, True)

    References:
      Levenberg, *A method for the solution of certain non-linear problems in least
      squares*, Quarterly of Applied Mathematics 2, 1944. Marquardt, *An algorithm for
      least-squares estimation of nonlinear parameters*, SIAM J. Appl. Math. 11, 1963.
      Moré, *The Levenberg-Marquardt algorithm: implementation and theory*, Lecture Notes
      in Mathematics 630, 1978. Transtrum and Sethna, *Improvements to the
      Levenberg-Marquardt algorithm for nonlinear least-squares minimization*, 2012.
      Przybylski et al., *Gpufit: an open-source toolkit for GPU-accelerated curve
      fitting*, Scientific Reports 7, 2017.
    """
    runtime, static = _lm_values(initial_damping, initial_radius, scaled, geodesic, solver, eta,
                                 max_cg_steps, cg_tol)  # fmt: skip

    @shape_only
    def init(params):
        dtype = _init_dtype(params)
        p = _num_params(params)
        values = dict(runtime)
        if ls.choose_solver(static["solver"], p) == "cg":
            values["cg_tol"] = static["cg_tol"]
        return LevenbergMarquardtState(
            count=zero_count(),
            damping=_const((), 0.0, dtype),
            radius=_const((), 0.0, dtype),
            scale=_const((p,), 1.0, dtype),
            rho=_const((), 0.0, dtype),
            accepted=_const((), False, bool),
            stuck=_const((), False, bool),
            cg_steps=zero_count(),
            hyperparams=initial_hyperparams(values, params),
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, model_fn=None,
               likelihood=None, targets=None, **extra):  # fmt: skip
        del extra
        _extras("levenberg_marquardt", value_fn, model_fn, likelihood, targets)
        extras = {"model_fn": model_fn, "likelihood": likelihood, "targets": targets}
        fl = _flat(params, grads, model_fn)
        x, g, dtype = fl.x, fl.g, fl.x.dtype
        hp = {k: v.astype(dtype) for k, v in state.hyperparams.items()}
        kind = ls.choose_solver(static["solver"], x.size)
        if kind == "cg":
            prop = _lm_cg(fl, extras, state, hp, static)
        else:
            prop = _lm_dense(fl, extras, state, hp, kind, static)
        mu = _first_damping(state, hp, prop.top, dtype)
        first = state.count == 0
        x_norm = jnp.linalg.norm(prop.scale * x)
        start = jnp.where(x_norm > 0, hp["initial_radius"] * x_norm, jnp.inf)
        radius = jnp.where(first, start, state.radius.astype(dtype))
        # the damped step, pulled back to the radius when longer than 1.1 times it (MINPACK
        # takes a step within 10% of the radius as on it)
        z_norm = jnp.linalg.norm(prop.z)
        inside = z_norm <= 1.1 * radius
        shrink = jnp.where(inside, 1.0, radius / jnp.where(z_norm > 0, z_norm, 1.0))
        d = prop.d * shrink
        size = z_norm * shrink
        skip = tr.no_trial(size, x_norm, x, d)
        change = tr.loss_change(lambda v: value_fn(fl.to_tree(v)), x, extras, fl.to_tree,
                                out=prop.out)  # fmt: skip
        predicted = -shrink * jnp.vdot(g, prop.d) - 0.5 * shrink * shrink * prop.zgz
        actual, gradient_shrinks = _trial(fl, extras, change, prop.pullback, x + d, g)
        verdict = tr.judge(actual, predicted, hp["eta"], change.size, tr.finite(d),
                           gradient_shrinks)  # fmt: skip
        moved = verdict.accept & ~skip
        # the Gauss-Newton step itself (no damping to speak of) fitted: MINPACK's par = 0
        undamped = inside & (mu <= jnp.sqrt(jnp.finfo(dtype).eps) * prop.top)
        # the undamped step's length from the secular model (1/||z(mu)|| about linear in mu):
        # 1/||z(0)|| ~ 1/||z|| - mu ||q||^2 / ||z||^3 (none left: the step is far longer)
        safe = jnp.where(z_norm > 0, z_norm, 1.0)
        inverse0 = (1.0 - mu * prop.inverse_norm2 / (safe * safe)) / safe
        undamped_norm = jnp.where(inverse0 > 0, 1.0 / jnp.where(inverse0 > 0, inverse0, 1.0),
                                  jnp.inf)  # fmt: skip
        new_radius = _next_radius(
            radius, verdict.rho, size, moved, undamped, z_norm, undamped_norm
        )
        # a step the radius held back (on its boundary, damped) whose decrease was within
        # rounding while the undamped step's would not be could not be judged: the region
        # grows instead of shrinking (the full step's decrease estimated along the way, where
        # a far-off minimum makes it grow about linearly with the length)
        full = predicted * undamped_norm / jnp.where(size > 0, size, 1.0)
        unmeasured = tr.unmeasured(verdict, full) & ~undamped & (size >= 0.9 * radius)
        new_radius = jnp.where(unmeasured, tr.QUIET_GROW * radius, new_radius)
        new_mu = _secular_damping(mu, z_norm, prop.inverse_norm2, new_radius, prop.top)
        # a failed factorisation (or an overflow): a rejection with ten times the damping
        failed = ~tr.finite(prop.d)
        new_radius = jnp.where(failed, jnp.where(jnp.isfinite(radius), tr.SHRINK * radius, radius),
                               new_radius)  # fmt: skip
        raised = jnp.maximum(10.0 * mu, jnp.sqrt(jnp.finfo(dtype).eps) * prop.top)
        new_mu = jnp.where(failed, jnp.minimum(raised, prop.top / jnp.finfo(dtype).eps ** 2),
                           new_mu)  # fmt: skip
        new_radius = jnp.where(skip, radius, new_radius)
        new_mu = jnp.where(skip, mu, new_mu)
        step = jnp.where(moved & tr.finite(d), d, 0.0)
        new_state = LevenbergMarquardtState(
            count=increment(state.count),
            damping=new_mu.astype(state.damping.dtype),
            radius=new_radius.astype(state.radius.dtype),
            scale=prop.scale.astype(state.scale.dtype),
            rho=verdict.rho.astype(state.rho.dtype),
            accepted=moved,
            stuck=skip,
            cg_steps=prop.cg_steps,
            hyperparams=state.hyperparams,
        )
        return fl.to_tree(step), new_state

    return curvature_rule(init, update, stalled=_stuck)


def _next_radius(radius, rho, size, moved, undamped, proposal, undamped_norm) -> jax.Array:
    """Moré's radius rule (MINPACK's ``lmder``), one proposal at a time: after a good step
    (``rho > 3/4``, or ``rho >= 1/4`` for the undamped Gauss-Newton step) at least twice the
    step; after a very good one (``rho > 0.9``) up to the damped proposal it was cut from,
    and after one the quadratic model predicted to 1% up to the undamped step's length;
    never more than ten times the step. After a poor step (``rho < 1/4``) at most half the
    radius; after a rejection a quarter of the step (Nocedal and Wright's Algorithm 4.1)."""
    good = (rho > tr.GOOD) | (undamped & (rho >= tr.POOR))
    opened = jnp.maximum(
        jnp.where(rho > VERY_GOOD, proposal, 0.0),
        jnp.where(jnp.abs(rho - 1.0) < 0.01, undamped_norm, 0.0),
    )
    model_held = jnp.minimum(opened, 10.0 * size)
    grown = jnp.maximum(jnp.maximum(radius, tr.GROW * size), model_held)
    grown = jnp.where(good, grown, radius)
    grown = jnp.where(rho < tr.POOR, jnp.minimum(0.5 * radius, size), grown)
    return jnp.where(moved, grown, tr.SHRINK * size)
