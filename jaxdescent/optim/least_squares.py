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

Both rules need the extra arguments ``model_fn``, ``likelihood`` and ``targets`` (and
``value_fn``), which :func:`jaxdescent.fit` passes for an ``nll`` loss; in a hand-written loop
pass ``opt.update(g, state, params, value_fn=lambda p: loss(p, batch),
**loss.rule_extras(batch))``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxdescent._checks import check_choice, check_int, check_nonnegative, check_positive
from jaxdescent.optim._common import curvature_rule, increment, no_step_taken, no_trial_made
from jaxdescent.optim.line_search import armijo_step, check_line_search, missing_value_fn

__all__ = [
    "GaussNewtonState",
    "LevenbergMarquardtState",
    "gauss_newton",
    "levenberg_marquardt",
]

# up to this many parameters "auto" forms G densely; beyond, CG on GGN-vector products
DENSE_MAX_PARAMS = 1000
_SOLVERS = ("auto", "dense", "cg")


class GaussNewtonState(NamedTuple):
    """State of :func:`gauss_newton`: updates made, the step size of the last one, the CG
    iterations it used (0 when dense) and the runtime hyperparameters."""

    count: jax.Array
    step_size: jax.Array
    cg_steps: jax.Array
    hyperparams: dict[str, jax.Array]


class LevenbergMarquardtState(NamedTuple):
    """State of :func:`levenberg_marquardt`.

    ``damping`` is the current ``mu``; ``scale`` the diagonal scaling ``D`` (Moré's running
    maximum of ``diag(G)``; ones when unscaled); ``rho`` the gain ratio of the last trial;
    ``radius`` the bound on the scaled step length; ``trials`` how many damped systems the
    last update solved; ``accepted`` whether it moved.
    """

    count: jax.Array
    damping: jax.Array
    scale: jax.Array
    radius: jax.Array
    rho: jax.Array
    trials: jax.Array
    accepted: jax.Array
    cg_steps: jax.Array
    hyperparams: dict[str, jax.Array]


def _extras(rule: str, value_fn, model_fn, likelihood, targets) -> None:
    if value_fn is None:
        raise missing_value_fn(rule)
    if model_fn is None or likelihood is None or targets is None:
        raise ValueError(
            f"{rule} needs the model and likelihood behind the loss: build the loss with "
            "jd.losses.nll(apply, likelihood) and pass data to jd.fit, or pass "
            "model_fn=, likelihood= and targets= to update() (loss.rule_extras(batch))"
        )


class _Curvature(NamedTuple):
    x: jax.Array  # flat params
    g: jax.Array  # flat gradient
    unravel: Any
    matvec: Any  # v -> G v
    dense: jax.Array | None  # G itself when formed
    # with a diagonal Fisher: G = A^T A and g = A^T b for the weighted Jacobian
    # A = sqrt(F/n) J and b = (dL/df) / sqrt(F/n), so steps come from an SVD of A (no squaring
    # of the condition number, as forming G would)
    wjac: jax.Array | None = None
    wres: jax.Array | None = None


def _curvature(params, grads, model_fn, likelihood, targets, dense: bool) -> _Curvature:
    """The GGN ``G = J^T F J / n`` at ``params``: dense, or as a matrix-free product."""
    x, unravel = ravel_pytree(params)
    g = ravel_pytree(grads)[0].astype(x.dtype)

    def out_fn(v):
        return model_fn(unravel(v))

    out = out_fn(x)
    n = out.shape[0] if out.ndim else 1
    if dense:
        flat = lambda v: out_fn(v).reshape(-1)  # noqa: E731
        jac = jax.jacfwd(flat)(x) if x.size <= out.size else jax.jacrev(flat)(x)  # (m, p)
        if getattr(likelihood, "diagonal_fisher", False):
            w = likelihood.fisher_vp(out, jnp.ones_like(out), targets).reshape(-1) / n
            sqrt_w = jnp.sqrt(jnp.maximum(w, 0.0)).astype(x.dtype)
            dl = jax.grad(lambda o: _mean_nll(likelihood, o, targets))(out).reshape(-1)
            safe = sqrt_w > jnp.finfo(x.dtype).tiny ** 0.5
            wres = jnp.where(safe, dl / jnp.where(safe, sqrt_w, 1.0), 0.0).astype(x.dtype)
            wjac = sqrt_w[:, None] * jac.astype(x.dtype)
            gmat = wjac.T @ wjac
            return _Curvature(x, g, unravel, lambda v: gmat @ v, gmat, wjac, wres)
        columns = jac.T.reshape((x.size, *out.shape))
        fj = jax.vmap(lambda c: likelihood.fisher_vp(out, c, targets))(columns)
        gmat = (fj.reshape(x.size, -1) @ jac).astype(x.dtype) / n
        gmat = 0.5 * (gmat + gmat.T)
        return _Curvature(x, g, unravel, lambda v: gmat @ v, gmat)
    _, jvp = jax.linearize(out_fn, x)
    vjp = jax.linear_transpose(jvp, x)

    def matvec(v):
        (back,) = vjp(likelihood.fisher_vp(out, jvp(v), targets))
        return back.astype(x.dtype) / n

    return _Curvature(x, g, unravel, matvec, None)


def _mean_nll(likelihood, output, targets):
    """The loss of :class:`jaxdescent.losses.NLL` as a function of the model outputs."""
    log_p = likelihood.log_prob(output, targets)
    return -jnp.sum(log_p) / (log_p.shape[0] if log_p.ndim else 1)


def _change(likelihood, targets, out_fn, x):
    """``v -> L(v) - L(x)`` summed example by example, so that constants in the NLL (the
    Gaussian's ``log(2 pi)/2``, say) cancel exactly: a decrease of 1e-10 in a loss of 0.92 is
    then still measured to full precision, as least-squares codes do with ``||r||^2``."""
    log_p0 = likelihood.log_prob_kernel(out_fn(x), targets)
    n = log_p0.shape[0] if log_p0.ndim else 1

    def change(v):
        return -jnp.sum(likelihood.log_prob_kernel(out_fn(v), targets) - log_p0) / n

    return change


class _Svd(NamedTuple):
    """``A D^{-1/2} = U diag(s) V^T`` and ``U^T b``: each damped solve is then O(p^2)."""

    s: jax.Array
    v: jax.Array
    ub: jax.Array
    inv_sqrt_scale: jax.Array


def _svd(c: _Curvature, scale) -> _Svd:
    inv = 1.0 / jnp.sqrt(scale)
    u, s, vt = jnp.linalg.svd(c.wjac * inv[None, :], full_matrices=False)
    return _Svd(s, vt.T, u.T @ c.wres, inv)


def _svd_step(f: _Svd, mu) -> jax.Array:
    """``d = -(A^T A + mu D)^{-1} A^T b``; with ``mu = 0`` the minimum-norm least-squares step
    (singular values below ``eps * max(m, p) * s_max`` are dropped)."""
    cutoff = jnp.finfo(f.s.dtype).eps * max(f.v.shape[0], f.ub.shape[0]) * jnp.max(f.s)
    keep = f.s > cutoff
    gain = jnp.where(keep, f.s / jnp.where(keep, f.s**2 + mu, 1.0), 0.0)
    return -f.inv_sqrt_scale * (f.v @ (gain * f.ub))


def _radius_damping(f: _Svd, radius, mu_start, iterations: int = 40):
    """The smallest ``mu >= 0`` with ``||z(mu)|| <= radius``, ``z = D^{1/2} d`` (Moré 1978).

    Newton's method on the secular equation ``1/radius - 1/||z(mu)|| = 0``, which is concave
    and increasing in ``mu``, so iterates from below never overshoot the root.
    """
    cutoff = jnp.finfo(f.s.dtype).eps * max(f.v.shape[0], f.ub.shape[0]) * jnp.max(f.s)
    keep = f.s > cutoff
    s2 = jnp.where(keep, f.s**2, 1.0)
    num = jnp.where(keep, f.s**2 * f.ub**2, 0.0)  # ||z||^2 = sum num / (s^2 + mu)^2

    def norm2(mu):
        return jnp.sum(num / (s2 + mu) ** 2)

    def body(_, mu):
        z2 = norm2(mu)
        q = jnp.sum(num / (s2 + mu) ** 3)
        znorm = jnp.sqrt(z2)
        step = (1.0 / radius - 1.0 / znorm) * znorm**3 / jnp.where(q > 0, q, 1.0)
        return jnp.where((znorm > radius) & (q > 0), mu + step, mu)

    mu0 = jnp.where(norm2(mu_start) > radius**2, mu_start, 0.0)
    mu0 = jnp.where(norm2(0.0) <= radius**2, 0.0, mu0)
    return jax.lax.fori_loop(0, iterations, body, mu0)


def _cg(matvec, b, *, max_steps: int, tol) -> tuple[jax.Array, jax.Array]:
    """Conjugate gradients on ``A d = b`` for a positive semi-definite ``A`` (flat vectors).

    Stops at relative residual ``tol``, after ``max_steps``, or on a direction of zero
    curvature (``A`` singular there). Returns ``(d, iterations)``.
    """
    dtype = b.dtype
    bb = jnp.vdot(b, b)

    def cond(state):
        i, *_, done = state
        return ~done & (i < max_steps)

    def body(state):
        i, d, r, p, rr, _ = state
        ap = matvec(p)
        curv = jnp.vdot(p, ap)
        flat = ~(curv > 0)
        alpha = jnp.where(flat, 0.0, rr / jnp.where(flat, 1.0, curv)).astype(dtype)
        d = d + alpha * p
        r = r - alpha * ap
        rr_new = jnp.vdot(r, r)
        p = r + (rr_new / jnp.where(rr > 0, rr, 1.0)).astype(dtype) * p
        done = flat | (rr_new <= tol**2 * bb)
        return i + 1, d, r, p, rr_new, done

    zero = jnp.zeros_like(b)
    start = (jnp.zeros([], jnp.int32), zero, b, b, bb, bb == 0)
    i, d, *_ = jax.lax.while_loop(cond, body, start)
    return d, i


def _finite(a: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(a))


def _pick_dense(solver: str, params: Any) -> bool:
    if solver == "auto":
        return sum(jnp.size(p) for p in jax.tree.leaves(params)) <= DENSE_MAX_PARAMS
    return solver == "dense"


def _solve(c: _Curvature, mu, scale, *, max_cg_steps: int, cg_tol, svd=None):
    """``d = -(G + mu diag(scale))^{-1} g``: by SVD, Cholesky or CG. Returns (d, CG iters)."""
    none = jnp.zeros([], jnp.int32)
    if svd is not None:
        return _svd_step(svd, mu), none
    if c.dense is not None:
        chol = jnp.linalg.cholesky(c.dense + jnp.diag(mu * scale))
        return -jax.scipy.linalg.cho_solve((chol, True), c.g), none
    return _cg(lambda v: c.matvec(v) + mu * scale * v, -c.g, max_steps=max_cg_steps, tol=cg_tol)


def gauss_newton(
    line_search: bool = True,
    *,
    damping: float = 0.0,
    solver: str = "auto",
    max_cg_steps: int = 50,
    cg_tol: float = 1e-6,
    shrink: float = 0.5,
    c1: float = 1e-4,
    max_line_search_steps: int = 50,
) -> optax.GradientTransformationExtraArgs:
    r"""Generalised Gauss-Newton from the likelihood: Fisher scoring, IRLS, Gauss-Newton.

    .. math::
       (G + \lambda I)\, d = -g, \quad G = \frac1n J^\top F J, \qquad
       \theta_{t+1} = \theta_t + \alpha\, d

    with ``J`` the Jacobian of the model's outputs on the batch, ``F`` the likelihood's Fisher
    information in output space (:meth:`jaxdescent.likelihoods.Likelihood.fisher_vp`: Gaussian
    ``1/sigma^2``, Bernoulli ``p(1-p)``, Categorical ``diag(p) - p p^T``, Poisson the rate),
    ``lambda`` = ``damping`` and ``alpha`` from Armijo backtracking (the full step first).
    For the Gaussian likelihood this is Gauss-Newton for nonlinear least squares; for a GLM
    with canonical link it equals Newton's method (Fisher scoring = IRLS). ``G`` is formed
    and factorised (Cholesky) for up to ``DENSE_MAX_PARAMS`` parameters (``solver="auto"``),
    else the system is solved by conjugate gradients on GGN-vector products (one ``jvp`` and
    one ``vjp`` each), never forming ``G``. A singular ``G`` (too few data, a redundant
    parameter) falls back to a searched gradient step, so the update is never NaN.

    Args:
      line_search: backtrack (Armijo) from the full step; ``False`` takes ``alpha = 1``.
      damping: Tikhonov term ``lambda >= 0`` (a runtime hyperparameter, in the state).
      solver: ``"auto"``, ``"dense"`` (Cholesky of ``G``) or ``"cg"`` (matrix-free).
      max_cg_steps, cg_tol: CG's iteration limit and relative residual tolerance.
      shrink, c1, max_line_search_steps: the line search's step factor, sufficient-decrease
        constant and most trial steps.

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
    if not isinstance(line_search, bool):
        raise TypeError(f"line_search must be True or False; got {line_search!r}")
    check_nonnegative("damping", damping)
    solver = check_choice("solver", solver, _SOLVERS)
    max_cg_steps = check_int("max_cg_steps", max_cg_steps, minimum=1)
    check_positive("cg_tol", cg_tol)
    max_ls = check_line_search(1.0, shrink, c1, max_line_search_steps)
    values = {"damping": damping, "cg_tol": cg_tol, "shrink": shrink, "c1": c1}

    def init(params):
        dtype = jnp.result_type(*jax.tree.leaves(params))
        return GaussNewtonState(
            count=jnp.zeros([], jnp.int32),
            step_size=jnp.zeros([], dtype),
            cg_steps=jnp.zeros([], jnp.int32),
            hyperparams={k: jnp.asarray(v, dtype) for k, v in values.items()},
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, model_fn=None,
               likelihood=None, targets=None, **extra):  # fmt: skip
        del extra
        _extras("gauss_newton", value_fn, model_fn, likelihood, targets)
        hp = state.hyperparams
        dense = _pick_dense(solver, params)
        c = _curvature(params, grads, model_fn, likelihood, targets, dense)
        dtype = c.x.dtype
        ones = jnp.ones_like(c.x)
        svd = None if c.wjac is None else _svd(c, ones)
        d, iters = _solve(c, hp["damping"].astype(dtype), ones, max_cg_steps=max_cg_steps,
                          cg_tol=hp["cg_tol"].astype(dtype), svd=svd)  # fmt: skip
        usable = _finite(d) & (jnp.vdot(c.g, d) < 0)
        d = jnp.where(usable, d, -c.g)

        f = _change(likelihood, targets, lambda v: model_fn(c.unravel(v)), c.x)

        if line_search:
            v0 = jnp.zeros([], dtype)  # f measures the change from the current loss
            kw = {"shrink": hp["shrink"].astype(dtype), "c1": hp["c1"].astype(dtype),
                  "max_steps": max_ls}  # fmt: skip
            t, found = armijo_step(f, c.x, d, v0, jnp.vdot(c.g, d), **kw)
            tg, _ = armijo_step(f, c.x, -c.g, v0, -jnp.vdot(c.g, c.g), active=~found, **kw)
            step = jnp.where(found, t * d, tg * -c.g)
            t = jnp.where(found, t, tg)
        else:
            step, t = d, jnp.ones([], dtype)
        step = jnp.where(_finite(step), step, jnp.zeros_like(step))
        new_state = GaussNewtonState(
            count=increment(state.count),
            step_size=t.astype(state.step_size.dtype),
            cg_steps=iters,
            hyperparams=hp,
        )
        return c.unravel(step), new_state

    return curvature_rule(init, update, stalled=no_step_taken if line_search else None)


def levenberg_marquardt(
    initial_damping: float = 1e-3,
    *,
    initial_radius: float = 1.0,
    scaled: bool = True,
    geodesic: bool = False,
    solver: str = "auto",
    max_trials: int = 30,
    eta: float = 1e-4,
    max_cg_steps: int = 50,
    cg_tol: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""Levenberg-Marquardt: Gauss-Newton with adaptive damping, for nonlinear least squares.

    .. math::
       (G + \mu D)\, d = -g, \qquad
       \rho = \frac{L(\theta) - L(\theta + d)}{-(g^\top d + \tfrac12 d^\top G d)}

    with ``G = J^T F J / n`` the generalised Gauss-Newton matrix (:func:`gauss_newton`) and
    ``D`` Moré's scaling, the running maximum of ``diag(G)`` (``scaled=True``; the identity
    otherwise), which makes the method invariant to the units of each parameter. A trial step
    is accepted only when it lowers the loss, ``rho > eta`` and its scaled length
    ``||D^{1/2} d||`` is within a radius ``Delta`` (first ``initial_radius * ||D^{1/2}
    theta_0||``, doubled after a step with ``rho > 3/4``, halved after one with ``rho < 1/4``;
    this keeps a far start from jumping into a region where the model saturates); then ``mu`` shrinks by
    Nielsen's rule ``mu <- mu max(1/3, 1 - (2 rho - 1)^3)``. Otherwise ``mu <- nu mu`` with
    ``nu`` doubling, and the system is solved again, up to ``max_trials`` times per update.
    A step that raises the loss is never taken: after ``max_trials`` rejections (at a
    minimum, where no step lowers the loss in floating point) the update is zero, and once
    ``Delta`` is below the rounding of the params, ``eps ||D^{1/2} theta||``, no trial is
    made at all, and in :func:`jaxdescent.fit` a full-batch run then ends with status
    ``STALLED``: from there no update can move the params. Large
    ``mu`` gives short gradient steps, small ``mu`` Gauss-Newton steps. The first ``mu`` is
    ``initial_damping * max(diag(G) / D)``.

    With ``geodesic=True`` each step adds Transtrum and Sethna's second-order correction
    ``a/2``, ``(G + mu D) a = -J^T F r''/n`` with ``r''`` the model's second directional
    derivative along ``d``, when ``2||a|| <= 0.75 ||d||``; it helps on long curved valleys.

    Args:
      initial_damping: ``tau``, the first ``mu`` relative to the largest scaled curvature
        (a runtime hyperparameter, in the state).
      initial_radius: the first ``Delta`` relative to ``||D^{1/2} theta_0||`` (runtime).
      scaled: Moré's diagonal scaling ``D``; ``False`` uses ``D = I`` (Levenberg's form).
      geodesic: add the geodesic acceleration term.
      solver: ``"auto"``, ``"dense"`` (Cholesky) or ``"cg"`` (matrix-free, ``D = I``).
      max_trials: most damped solves per update.
      eta: smallest gain ratio accepted, in ``[0, 1)``.
      max_cg_steps, cg_tol: CG's limits (``solver="cg"``).

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
      in Mathematics 630, 1978. Nielsen, *Damping parameter in Marquardt's method*,
      IMM-REP-1999-05, DTU, 1999. Transtrum and Sethna, *Improvements to the
      Levenberg-Marquardt algorithm for nonlinear least-squares minimization*, 2012.
    """
    check_positive("initial_damping", initial_damping)
    check_positive("initial_radius", initial_radius)
    for name, flag in (("scaled", scaled), ("geodesic", geodesic)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False; got {flag!r}")
    solver = check_choice("solver", solver, _SOLVERS)
    max_trials = check_int("max_trials", max_trials, minimum=1)
    check_nonnegative("eta", eta)
    if float(eta) >= 1.0:
        raise ValueError(f"eta must be in [0, 1); got {eta!r}")
    max_cg_steps = check_int("max_cg_steps", max_cg_steps, minimum=1)
    check_positive("cg_tol", cg_tol)
    values = {
        "initial_damping": initial_damping,
        "initial_radius": initial_radius,
        "eta": eta,
        "cg_tol": cg_tol,
    }

    def init(params):
        x, _ = ravel_pytree(params)
        dtype = x.dtype
        return LevenbergMarquardtState(
            count=jnp.zeros([], jnp.int32),
            damping=jnp.zeros([], dtype),
            scale=jnp.zeros_like(x),
            radius=jnp.zeros([], dtype),
            rho=jnp.zeros([], dtype),
            trials=jnp.zeros([], jnp.int32),
            accepted=jnp.zeros([], bool),
            cg_steps=jnp.zeros([], jnp.int32),
            hyperparams={k: jnp.asarray(v, dtype) for k, v in values.items()},
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, model_fn=None,
               likelihood=None, targets=None, **extra):  # fmt: skip
        del extra
        _extras("levenberg_marquardt", value_fn, model_fn, likelihood, targets)
        hp = state.hyperparams
        dense = _pick_dense(solver, params)
        c = _curvature(params, grads, model_fn, likelihood, targets, dense)
        dtype = c.x.dtype
        tiny = jnp.finfo(dtype).tiny
        if scaled and dense:
            diag = jnp.diagonal(c.dense)
            scale = jnp.maximum(state.scale.astype(dtype), diag)
            scale = jnp.where(scale > 0, scale, 1.0)
        else:
            diag = jnp.diagonal(c.dense) if dense else jnp.ones_like(c.x)
            scale = jnp.ones_like(c.x)
        first = jnp.max(jnp.where(jnp.isfinite(diag / scale), diag / scale, 0.0))
        mu0 = jnp.where(
            (state.count == 0) | ~(state.damping > 0),
            hp["initial_damping"].astype(dtype) * jnp.maximum(first, tiny),
            state.damping.astype(dtype),
        )
        cg_tol_v = hp["cg_tol"].astype(dtype)
        eta_v = hp["eta"].astype(dtype)
        mu_max = jnp.asarray(1e30, dtype) * jnp.maximum(jnp.max(scale), 1.0)
        svd = None if c.wjac is None else _svd(c, scale)
        root = jnp.sqrt(scale)
        x_size = jnp.linalg.norm(root * c.x)
        start_radius = hp["initial_radius"].astype(dtype) * x_size
        # the radius only falls this low after many rejected trials in a row; a step within
        # it changes the scaled params by less than their rounding (eps ||D^{1/2} x||), so
        # no trial is made (a run stalled at the floor of its precision then costs a
        # Jacobian per step, not max_trials rejected solves)
        floor = jnp.finfo(dtype).eps * x_size
        radius = jnp.where(
            state.count == 0,
            jnp.where(start_radius > 0, start_radius, hp["initial_radius"].astype(dtype)),
            state.radius.astype(dtype),
        )

        def out_fn(v):
            return model_fn(c.unravel(v))

        change = _change(likelihood, targets, out_fn, c.x)

        def trial(mu, radius):
            if svd is not None:  # Moré: the damping that puts the step on the trust radius
                mu = _radius_damping(svd, radius, jnp.zeros_like(mu))
            d, iters = _solve(c, mu, scale, max_cg_steps=max_cg_steps, cg_tol=cg_tol_v, svd=svd)
            if geodesic:
                d = d + 0.5 * _acceleration(c, out_fn, likelihood, targets, d, mu, scale)
            actual = -jnp.asarray(change(c.x + d), dtype)
            predicted = -(jnp.vdot(c.g, d) + 0.5 * jnp.vdot(d, c.matvec(d)))
            rho = actual / jnp.where(predicted > 0, predicted, 1.0)
            ok = _finite(d) & jnp.isfinite(actual) & (predicted > 0)
            size = jnp.linalg.norm(root * d)
            fits = size <= radius * (1.0 + 1e-6) if svd is not None else size <= radius
            accept = ok & (actual > 0) & (rho > eta_v) & fits
            return d, rho, accept, iters, size, mu

        def cond(s):
            return ~s[3] & (s[4] < max_trials) & (s[7] > floor)

        def body(s):
            mu, nu, _, _, i, _, cg_total, radius = s
            d, rho, accept, iters, size, mu_used = trial(mu, radius)
            if svd is not None:  # trust-region form: the radius drives the damping
                new_mu = mu_used
                good = (rho > 0.75) | (mu_used == 0)
                grown = jnp.where(good, jnp.maximum(radius, 2.0 * size), radius)
                grown = jnp.where(rho < 0.25, 0.5 * jnp.minimum(radius, size), grown)
                failed = 0.5 * jnp.minimum(radius, jnp.where(jnp.isfinite(size), size, radius))
                radius = jnp.where(accept, grown, failed)
            else:  # Nielsen's damping update; the radius only bounds the step
                shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                new_mu = jnp.where(accept, mu * shrink, jnp.minimum(mu * nu, mu_max))
                grown = jnp.where(rho > 0.75, jnp.maximum(radius, 2.0 * size), radius)
                grown = jnp.where(rho < 0.25, 0.5 * radius, grown)
                radius = jnp.where(accept, grown, radius)
            new_nu = jnp.where(accept, 2.0, 2.0 * nu).astype(dtype)
            step = jnp.where(accept, d, 0.0)
            return new_mu, new_nu, step, accept, i + 1, rho, cg_total + iters, radius

        start = (
            mu0,
            jnp.asarray(2.0, dtype),
            jnp.zeros_like(c.x),
            jnp.zeros([], bool),
            jnp.zeros([], jnp.int32),
            jnp.zeros([], dtype),
            jnp.zeros([], jnp.int32),
            radius,
        )
        mu, _, step, accept, trials, rho, cg_total, radius = jax.lax.while_loop(cond, body, start)
        new_state = LevenbergMarquardtState(
            count=increment(state.count),
            damping=mu.astype(state.damping.dtype),
            scale=scale.astype(state.scale.dtype),
            radius=radius.astype(state.radius.dtype),
            rho=rho.astype(state.rho.dtype),
            trials=trials,
            accepted=accept,
            cg_steps=cg_total,
            hyperparams=hp,
        )
        return c.unravel(step), new_state

    return curvature_rule(init, update, stalled=no_trial_made)


def _acceleration(c: _Curvature, out_fn, likelihood, targets, d, mu, scale):
    """Geodesic acceleration ``a``: ``(G + mu D) a = -J^T F r''/n``, kept when small."""
    out = out_fn(c.x)
    n = out.shape[0] if out.ndim else 1

    def directional(v):
        return jax.jvp(out_fn, (v,), (d,))[1]

    second = jax.jvp(directional, (c.x,), (d,))[1]
    _, vjp = jax.vjp(out_fn, c.x)
    (rhs,) = vjp(likelihood.fisher_vp(out, second, targets))
    rhs = rhs.astype(c.x.dtype) / n
    accel, _ = _solve(c._replace(g=rhs, wjac=None), mu, scale, max_cg_steps=50, cg_tol=1e-8)
    keep = _finite(accel) & (2.0 * jnp.linalg.norm(accel) <= 0.75 * jnp.linalg.norm(d))
    return jnp.where(keep, accel, 0.0)
