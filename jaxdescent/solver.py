"""``solve``: a whole minimisation as a pure JAX function.

``jd.solve`` runs the same loop, step and status rules as :func:`jaxdescent.fit`, with no
host work: it composes with ``jax.jit``, ``jax.vmap`` (over starting points, data sets and
the hyperparameters of jaxdescent's rules; each lane stops on its own) and ``jax.grad``
(implicit differentiation at the solution by default). Called outside any transformation
it compiles once per configuration and reuses the program, as ``fit`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdescent._checks import check_bool, check_callable, check_choice, check_int
from jaxdescent._engine import adjoint as adjoints
from jaxdescent._engine import core, programs
from jaxdescent._engine.cache import Traced
from jaxdescent._engine.checks import (
    as_key,
    check_optimizer,
    check_problem,
    check_record_every,
    check_tol,
    has_tracer,
    value_only,
)
from jaxdescent.losses import NLL
from jaxdescent.optim._common import host_state
from jaxdescent.results import Status

__all__ = ["Solution", "solve"]

_ADJOINTS = ("implicit", "unrolled")


class Solution(NamedTuple):
    """The result of :func:`solve`: a pytree, so it can leave ``jax.jit`` and ``jax.vmap``.

    Attributes:
      params: the final params (the last ones at which the loss and gradient were finite).
      opt_state: the optimizer state that goes with them.
      status: a :class:`~jaxdescent.results.Status` code (an int32 array).
      steps_taken: updates applied to reach ``params``.
      final_loss: the loss at ``params`` on the whole data.
      final_grad_norm: the gradient norm there.
      aux: with ``has_aux=True``, the loss's auxiliary output at ``params``.
      losses: with ``record_every=k``, the loss of every ``k``-th step, a fixed-size array of
        ``ceil(steps / k)`` rows (``nan`` past the step the run stopped at); else ``None``.
      grad_norms: the gradient norms of the same steps (the batch's, for mini-batches).
    """

    params: Any
    opt_state: Any
    status: jax.Array
    steps_taken: jax.Array
    final_loss: jax.Array
    final_grad_norm: jax.Array
    aux: Any = None
    losses: jax.Array | None = None
    grad_norms: jax.Array | None = None

    @property
    def success(self) -> jax.Array:
        """Whether the gradient norm fell below ``tol`` (an array: it works under jit)."""
        return self.status == Status.CONVERGED

    @property
    def message(self) -> str:
        """Why the run ended, in words (concrete results only)."""
        codes = np.asarray(self.status).reshape(-1)
        if codes.size == 1:
            return Status(int(codes[0])).message
        parts = [f"{int(np.sum(codes == s))} {s.name}" for s in Status if np.any(codes == s)]
        return f"{codes.size} runs: " + ", ".join(parts)


def solve(
    loss: Callable,
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    data: Any = None,
    steps: int,
    tol: float | jax.Array | None = None,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    record_every: int | None = None,
    has_aux: bool = False,
    adjoint: str = "implicit",
    throw: bool = False,
) -> Solution:
    r"""Minimise ``loss`` from ``params`` with ``optimizer``: a pure function of its inputs.

    The same loop and status rules as :func:`jaxdescent.fit` (one ``lax.while_loop``): each
    step measures the loss and gradient at the params and applies the update

    .. math:: \theta_{t+1} = \theta_t + u_t, \qquad (u_t, s_{t+1}) = \mathrm{update}(\nabla L(\theta_t), s_t, \theta_t),

    until the gradient norm falls below ``tol`` (``CONVERGED``), the budget is spent
    (``MAX_STEPS``), the loss or gradient is not finite (``NONFINITE``, at the last finite
    params) or the rule stalls (``STALLED``). ``solve`` and ``fit`` return the same params,
    status and step count for the same configuration.

    **Inside transformations.** ``jax.jit(solve)``, ``jax.vmap`` over ``params``, ``data``,
    ``tol``, ``key`` or the numbers given to a jaxdescent rule (``jax.vmap(lambda lr:
    jd.solve(loss, p0, jd.optim.sgd(lr), ...))``), nested vmaps and ``jax.jit(jax.vmap(...))``
    all work; under vmap each lane stops at its own step with its own status, and a lane
    that turns non-finite ends ``NONFINITE`` without disturbing the others. Called outside
    any transformation, ``solve`` compiles once per configuration and reuses the program.

    **Derivatives.** With ``adjoint="implicit"`` (default), derivatives of the returned
    ``params`` (and ``final_loss``) with respect to ``data`` (anything the loss reads from it:
    targets, a penalty weight, an offset) and any traced value the loss closes over come
    from the implicit function theorem at the solution, as a custom JVP (forward mode,
    reverse mode and higher derivatives work):

    .. math:: \frac{d\theta^*}{d\,\mathrm{data}} = -H^{-1} \frac{\partial^2 L}{\partial\theta\, \partial\,\mathrm{data}},

    with ``H`` the Hessian of the loss at the returned params on the whole data, whatever the
    status (the status says how far to trust them). Where ``H`` is singular or not positive
    definite the derivative does not exist and comes out NaN. The derivative with respect
    to the starting ``params`` is zero; ``opt_state``, ``final_grad_norm`` and the histories
    are not differentiated; ``aux`` is evaluated at the returned params, so its derivatives
    follow from theirs. With mini-batches, differentiate with respect to ``data`` only.
    ``adjoint="unrolled"`` differentiates through the steps instead (a fixed number: no
    ``tol``), checkpointed so that memory grows like ``sqrt(steps)``; use it for derivatives
    with respect to the optimizer's settings (a learning rate) or the start.

    Args:
      loss: ``loss(params)`` when ``data`` is None, else ``loss(params, data)``; a scalar.
      params: initial parameters, a pytree of floating-point arrays.
      optimizer: any optax transformation (jaxdescent's rules, optax's, chains).
      data: any pytree passed whole to ``loss`` (full batch); with ``batch_size``, arrays
        sharing a leading axis of examples, batched as in ``fit``.
      steps: the step budget (a Python int, at least 1).
      tol: stop when the gradient norm falls below it (may be traced); ``None``: never.
      batch_size: mini-batch size (needs ``data``); batches are drawn as ``fit`` draws them.
      key: PRNG key for the batch order (default ``jax.random.key(0)``).
      record_every: record the loss and gradient norm of every ``k``-th step into a
        fixed-size history (``None``: none). Under ``vmap`` a history is copied at every
        step of the batched loop; leave it off for large batches of small fits.
      has_aux: ``loss`` returns ``(value, aux)``.
      adjoint: ``"implicit"`` or ``"unrolled"``.
      throw: a run that ends ``NONFINITE`` or ``STALLED``, or ``MAX_STEPS`` when ``tol`` was
        given, raises: at once outside jit, and inside jit as an error raised when the
        program runs (``RuntimeError`` naming the statuses).

    Returns:
      A :class:`Solution`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> f = lambda w, lam: jnp.sum((w - 3.0) ** 2) + lam * jnp.sum(w ** 2)   # w* = 3/(1+lam)
      >>> sol = jd.solve(f, jnp.zeros(2), jd.optim.newton(), data=1.0, steps=20, tol=1e-6)
      >>> [round(float(v), 4) for v in sol.params], str(jd.Status(int(sol.status)))
      ([1.5, 1.5], 'CONVERGED')
      >>> dw = jax.grad(lambda lam: jd.solve(f, jnp.zeros(2), jd.optim.newton(), data=lam,
      ...                                     steps=20, tol=1e-6).params[0])(1.0)
      >>> round(float(dw), 4)                                    # -3 / (1 + lam)^2
      -0.75
    """
    check_callable("loss", loss)
    check_optimizer(optimizer)
    steps = check_int("steps", steps, minimum=1)
    has_aux = check_bool("has_aux", has_aux)
    throw = check_bool("throw", throw)
    adjoint = check_choice("adjoint", adjoint, _ADJOINTS)
    if adjoint == "unrolled" and tol is not None:
        raise ValueError(
            "adjoint='unrolled' differentiates through a fixed number of steps; it cannot "
            f"stop early on tol (got tol={tol!r}): leave tol out"
        )
    check_tol(tol)
    every = check_record_every(record_every)
    value_loss = value_only(loss) if has_aux else loss
    n = check_problem(value_loss, params, data, batch_size, steps, None, full_batch_any=True)
    key = as_key(key)
    spec = core.Spec(batch_size, n, every, core.rows_for(steps, every))
    tol_value = -jnp.inf if tol is None else tol

    traced = has_tracer((params, data, key, tol))
    program = None
    if not traced:
        try:
            small = programs.small_run(params, data, batch_size)
            program = programs.loop(value_loss, optimizer, spec, small=small)
        except Traced:  # the loss or optimizer closes over a traced value
            program = None
    if program is not None:
        with host_state():
            opt_state = optimizer.init(params)
        state = core.init_state(params, opt_state, key, spec)
        tol_arg = -np.inf if tol is None else tol
        state, history = program((value_loss, optimizer), state, data, tol_arg, steps, steps)
    elif adjoint == "unrolled":
        state = core.init_state(params, optimizer.init(params), key, spec)
        state, history = adjoints.unrolled(
            state, data, tol_value, steps, loss=value_loss, optimizer=optimizer, spec=spec
        )
    else:
        state, history = _implicit_solve(
            value_loss, optimizer, spec, params, data, key, tol_value, steps
        )

    aux = None
    if has_aux:
        aux = loss(state.params)[1] if data is None else loss(state.params, data)[1]
    losses, norms = history if every else (None, None)
    sol = Solution(
        params=state.params,
        opt_state=state.opt_state,
        status=state.status,
        steps_taken=state.updates,
        final_loss=state.loss,
        final_grad_norm=state.grad_norm,
        aux=aux,
        losses=losses,
        grad_norms=norms,
    )
    if throw:
        sol = _throw(sol, tol is not None, traced or program is None)
    return sol


def _implicit_solve(loss, optimizer, spec, params, data, key, tol, steps):
    """The loop, wrapped so that derivatives with respect to ``data`` (and traced values the
    loss closes over) come from :func:`jaxdescent._engine.adjoint.implicit`."""
    full_batch = spec.batch_size is None
    if data is None:
        converted, consts = jax.closure_convert(lambda p: loss(p), params)

        def loss_c(p, theta):
            return converted(p, *theta[1])
    else:
        converted, consts = jax.closure_convert(lambda p, d: loss(p, d), params, data)

        def loss_c(p, theta):
            return converted(p, theta[0], *theta[1])

    def forward(params0, theta, rest):
        opt_state0, key, tol = rest
        if full_batch and not isinstance(loss, NLL):
            # the loop reads the data and the loss's traced values as inputs (an ``nll`` loss
            # stays itself: curvature rules read its model and likelihood)
            if data is None:
                run_loss = lambda p: loss_c(p, theta)  # noqa: E731
            else:
                run_loss = lambda p, d: converted(p, d, *theta[1])  # noqa: E731
        else:
            run_loss = loss
        state = core.init_state(params0, opt_state0, key, spec)
        return core.run(
            state, theta[0], tol, steps, steps, loss=run_loss, optimizer=optimizer, spec=spec
        )

    rest = (optimizer.init(params), key, tol)
    return adjoints.implicit(forward, loss_c, params, (data, tuple(consts)), rest)


def _failed(status, tol_given) -> np.ndarray:
    codes = np.asarray(status).reshape(-1)
    bad = (codes == Status.NONFINITE) | (codes == Status.STALLED)
    if tol_given:
        bad |= codes == Status.MAX_STEPS
    return codes[bad]


def _raise_if_failed(status, tol_given: bool) -> None:
    failed = _failed(status, tol_given)
    if failed.size:
        size = np.size(status)
        names = sorted({Status(int(c)).name for c in failed})
        who = "the run" if size == 1 else f"{failed.size} of {size} runs"
        raise RuntimeError(
            f"jd.solve failed (throw=True): {who} ended {' / '.join(names)} "
            f"({'; '.join(Status[n].message for n in names)})"
        )


def _throw(sol: Solution, tol_given: bool, traced: bool) -> Solution:
    if not traced:
        _raise_if_failed(sol.status, tol_given)
        return sol
    jax.debug.callback(functools.partial(_raise_if_failed, tol_given=tol_given), sol.status)
    return sol
