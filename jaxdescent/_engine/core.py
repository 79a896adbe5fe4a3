"""The core of every run: one ``lax.while_loop`` over steps, with the status rules.

A run's :class:`State` holds its params, optimizer state, the params before the last update,
its counters and :class:`~jaxdescent.results.Status`. Each loop iteration measures the loss
and gradient at the params (on this step's batch), decides the status (:func:`decide`, the
one place a status is decided), then updates the params or ends the run:

- the gradient norm below ``tol`` (for mini-batches, confirmed on the whole data): the run
  ends ``CONVERGED`` at the params it measured;
- a non-finite loss or gradient: the run ends ``NONFINITE`` at the params before the last
  update (where both were finite);
- the rule's stall test (full batch): ``STALLED`` at the params it measured;
- the step budget: a full-batch run measures its last params in one more iteration, which
  updates nothing, and ends ``MAX_STEPS`` (or ``CONVERGED``); a mini-batch run's last params
  are measured on the whole data after the loop (:func:`finish`).

:func:`run` runs a state up to a step (``until``), so a host driver can run it in chunks
(:func:`jaxdescent.fit`) and a pure solve in one call (:func:`jaxdescent.solve`); both run
the same program. With ``batched`` the state has a leading axis of runs (restarts): each
iteration is the same step ``vmap``-ed over them, a run that has ended is frozen, and the loop
goes on while some run goes on. Under a user's ``jax.vmap`` of a solve, JAX batches the loop
in the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import custom_batching

from jaxdescent import data as data_lib
from jaxdescent._engine.step import (
    apply_update,
    as_extra_args,
    global_norm,
    measure,
    stall_test,
)
from jaxdescent.results import Status

RUNNING, CONVERGED, MAX_STEPS, NONFINITE, STALLED = (int(s) for s in Status)


class Spec(NamedTuple):
    """A run's static settings (part of its program's key).

    ``n`` is the number of examples (0 without data); ``record_every`` records the loss and
    gradient norm of every ``k``-th step (0: none) into ``rows`` rows per call.
    """

    batch_size: int | None
    n: int
    record_every: int
    rows: int


class State(NamedTuple):
    """Everything a run needs to continue (saved whole in checkpoints).

    ``prev`` is the params and optimizer state before the last accepted update, packed
    (:func:`pack`): a run whose loss or gradient turns non-finite returns to them. ``step``
    counts the loss evaluations made (the final evaluation of a full-batch run is not
    counted), ``updates`` the updates applied to reach ``params``. ``loss`` and ``grad_norm``
    are the last finite measurement: at ``params`` once the run has ended, at the ``prev``
    params while it goes on.
    """

    params: Any
    opt_state: Any
    prev: tuple
    step: jax.Array
    updates: jax.Array
    status: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    key: jax.Array
    perm: jax.Array  # this epoch's order of the examples (empty for full batch)


def history_dtype(params: Any) -> jnp.dtype:
    """The dtype of losses and gradient norms: the params' real float type, at least float32
    (a float16 run's loss of 1e5 is then not recorded as inf)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    real = [jnp.finfo(d).dtype for d in dtypes if jnp.issubdtype(d, jnp.inexact)]
    return jnp.promote_types(jnp.result_type(*real) if real else jnp.float32, jnp.float32)


def init_state(params, opt_state, key, spec: Spec, runs: tuple[int, ...] = ()) -> State:
    """A run's state at its start; with ``runs=(restarts,)`` stacked restarts (the params,
    state and keys then have that leading axis). Counters are NumPy arrays: eager ``jnp``
    would compile a small program per new shape."""
    zero = np.zeros(runs, np.int32)
    nan = np.full(runs, np.nan, history_dtype(params))
    perm = np.zeros((*runs, spec.n if spec.batch_size is not None else 0), np.int32)
    snapshot = (params, opt_state)
    if runs:
        prev = jax.vmap(pack)(snapshot) if _traced(snapshot) else pack_host(snapshot, len(runs))
    else:
        prev = pack(snapshot) if _traced(snapshot) else pack_host(snapshot)
    return State(params, opt_state, prev, zero, zero, zero, nan, nan, key, perm)


def _traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def rows_for(length: int, every: int) -> int:
    """History rows a call of ``length`` steps needs: at most ``ceil(length / every)`` of its
    steps are multiples of ``every``."""
    return 0 if every == 0 else -(-length // every)


def recorded_rows(first: int, ran: int, every: int) -> int:
    """How many of the steps ``first, ..., first + ran - 1`` are recorded (``step % every ==
    0``; none when ``every == 0``)."""
    if every == 0:
        return 0
    return -(-(first + ran) // every) - -(-first // every)


# --- one evaluation ---------------------------------------------------------------------------


def decide(status, *, active, finite, converged, stalled, budget) -> jax.Array:
    """The status after one evaluation of a run; the only place a status is decided.

    A run that is not ``active`` keeps its status. Otherwise, in order: a non-finite loss or
    gradient gives ``NONFINITE``; a gradient norm below ``tol`` (confirmed on the whole data)
    ``CONVERGED``; the rule's stall test ``STALLED``; a spent budget ``MAX_STEPS``; else the
    run goes on (``RUNNING``).
    """
    new = jnp.where(budget, MAX_STEPS, RUNNING)
    new = jnp.where(stalled, STALLED, new)
    new = jnp.where(converged, CONVERGED, new)
    new = jnp.where(finite, new, NONFINITE)
    return jnp.where(active, new, status).astype(jnp.int32)


def _draw_if(new_epoch, key, epoch, perm, n: int):
    """``perm`` or, when ``new_epoch``, the order of epoch ``epoch`` (:mod:`jaxdescent.data`).

    Under ``vmap`` a ``lax.cond`` with a batched predicate runs both branches, drawing a
    permutation at every step; here the batched form draws only when some run starts an
    epoch (:func:`_draw_if_batched`).
    """
    return jax.lax.cond(new_epoch, lambda: data_lib.epoch_permutation(key, epoch, n), lambda: perm)


@functools.cache
def _batched_draw(n: int) -> Callable:
    @custom_batching.custom_vmap
    def draw_if(new_epoch, key, epoch, perm):
        return _draw_if(new_epoch, key, epoch, perm, n)

    @draw_if.def_vmap
    def rule(axis_size, in_batched, new_epoch, key, epoch, perm):
        def lanes(x, batched):
            return x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

        new_epoch, key, epoch, perm = map(lanes, (new_epoch, key, epoch, perm), in_batched)
        draw = jax.vmap(data_lib.epoch_permutation, in_axes=(0, 0, None))
        out = jax.lax.cond(
            jnp.any(new_epoch),
            lambda: jnp.where(new_epoch[:, None], draw(key, epoch, n), perm),
            lambda: perm,
        )
        return out, True

    return draw_if


class Proposal(NamedTuple):
    """One evaluation of a run before any decision: the batch, the loss and gradient at the
    params, the gradient norm and the epoch's order."""

    batch: Any
    value: jax.Array
    grads: Any
    norm: jax.Array
    perm: jax.Array


def propose(state: State, data, *, loss, spec: Spec) -> Proposal:
    if spec.batch_size is None:
        batch, perm = data, state.perm
    else:
        per_epoch = data_lib.batches_per_epoch(spec.n, spec.batch_size)
        within = state.step % per_epoch
        perm = _batched_draw(spec.n)(within == 0, state.key, state.step // per_epoch, state.perm)
        batch = data_lib.take_batch(data, perm, within, spec.batch_size)
    value, grads = measure(loss, state.params, batch)
    dtype = state.loss.dtype
    return Proposal(batch, value.astype(dtype), grads, global_norm(grads).astype(dtype), perm)


def running_in_call(state: State, steps, until, spec: Spec) -> jax.Array:
    """Whether a run takes an evaluation in this call: it goes on and has steps left before
    ``until``; a full-batch run also makes its final evaluation (at ``step == steps``)."""
    going = state.status == RUNNING
    if spec.batch_size is None:
        return going & ((state.step < until) | (state.step == steps))
    return going & (state.step < until)


def _group(leaf) -> np.dtype:
    return jax.dtypes.canonicalize_dtype(jnp.result_type(leaf))


def pack(tree: Any) -> tuple[jax.Array, ...]:
    """The leaves of ``tree`` joined end to end, one flat array per dtype (in order of first
    appearance). A snapshot of the params and optimizer state is then one or two arrays: a
    select or a copy of it is one kernel, where a tree of them costs a kernel per leaf
    (XLA:CPU runs each as a separate kernel; in a small step that is most of the time)."""
    groups: dict[Any, list] = {}
    for leaf in jax.tree.leaves(tree):
        groups.setdefault(_group(leaf), []).append(jnp.ravel(leaf))
    return tuple(jnp.concatenate(g) if len(g) > 1 else g[0] for g in groups.values())


def pack_host(tree: Any, lead: int = 0) -> tuple[np.ndarray, ...]:
    """:func:`pack` on the host, with NumPy (no compile); with ``lead`` leading axes kept
    (stacked restarts)."""
    groups: dict[Any, list] = {}
    for leaf in jax.tree.leaves(tree):
        dtype = _group(leaf)
        x = np.asarray(leaf, dtype)
        groups.setdefault(dtype, []).append(x.reshape((*x.shape[:lead], -1)))
    return tuple(np.concatenate(g, axis=-1) for g in groups.values())


def _slices(like: Any):
    """For each leaf of ``like``: its group, offset and size in the packed arrays."""
    order: dict[Any, int] = {}
    offsets: list[int] = []
    out = []
    for leaf in jax.tree.leaves(like):
        g = order.setdefault(_group(leaf), len(order))
        if g == len(offsets):
            offsets.append(0)
        size = int(np.size(leaf))
        out.append((g, offsets[g], size, np.shape(leaf)))
        offsets[g] += size
    return out


def unpack(packed: tuple[jax.Array, ...], like: Any, keep: tuple = ()) -> Any:
    """The tree of ``like``'s structure, shapes and dtypes from :func:`pack`'s arrays; the
    leaves marked in ``keep`` are ``like``'s own (no slice of the snapshot)."""
    leaves, tree = jax.tree.flatten(like)
    keep = keep or (False,) * len(leaves)
    out = [
        leaf if kept else jax.lax.slice_in_dim(packed[g], i, i + n).reshape(shape)
        for leaf, kept, (g, i, n, shape) in zip(leaves, keep, _slices(like))
    ]
    return jax.tree.unflatten(tree, out)


def unpack_host(packed: tuple[np.ndarray, ...], like: Any) -> Any:
    """:func:`unpack` on the host, with NumPy (leading axes of ``packed`` kept)."""
    leaves, tree = jax.tree.flatten(like)
    out = []
    for leaf, (g, i, n, _) in zip(leaves, _slices_of_leading(like, packed)):
        piece = np.asarray(packed[g])[..., i : i + n]
        out.append(piece.reshape(piece.shape[:-1] + np.shape(leaf)[piece.ndim - 1 :]))
    return jax.tree.unflatten(tree, out)


def _slices_of_leading(like, packed):
    lead = np.ndim(packed[0]) - 1
    per_run = jax.tree.map(lambda x: np.zeros(np.shape(x)[lead:], _group(x)), like)
    return _slices(per_run)


def commit(
    state: State,
    here: tuple,
    p: Proposal,
    confirm,
    tol,
    steps,
    until,
    *,
    loss,
    optimizer,
    spec: Spec,
    notes: dict | None = None,
) -> tuple[State, tuple]:
    """One evaluation's decision, and the update: ``(state, here)``.

    ``confirm`` is the whole-data gradient norm when this step's batch norm fell below ``tol``
    (full batch: the norm itself). The update is applied whatever the decision, as in a
    hand-written loop. ``here`` (the params and state to measure next; at the end of a run,
    the ones it measured last) and ``state.prev`` (those before the last accepted update) are
    packed snapshots (:func:`pack`) of the new params, so no buffer the update overwrites has
    to be copied first, and a run that ends here is set back to one of them once, by
    :func:`settle`, after the loop. (Choosing the trees at every step instead, by a select or a ``lax.cond`` per leaf,
    made XLA:CPU run a small step two to three times slower.) With ``here=None`` (batched
    runs, where a run that has ended must be held anyway) the update is gated instead: a run
    that does not go on keeps the params and state it measured, and ``state.prev`` is packed
    from them when it does. A curvature rule's update (a
    Hessian, a factorisation) runs under ``lax.cond``, so the evaluation that ends a run
    computes none.
    """
    active = running_in_call(state, steps, until, spec)
    full_batch = spec.batch_size is None
    final = (state.step == steps) if full_batch else jnp.zeros((), bool)
    finite = jnp.isfinite(p.value) & jnp.isfinite(p.norm)
    test = stall_test(optimizer) if full_batch else None
    status = decide(
        state.status,
        active=active,
        finite=finite,
        converged=finite & (p.norm < tol) & (confirm < tol),
        stalled=finite & (False if test is None else test(state.opt_state)),
        budget=final,
    )
    go = active & (status == RUNNING)
    back = active & ~finite

    def advance():
        return apply_update(
            loss, optimizer, state.params, state.opt_state, p.batch, p.value, p.grads
        )

    current = (state.params, state.opt_state)
    if getattr(optimizer.update, "compile_for_latency", False):
        params, opt_state = jax.lax.cond(go, advance, lambda: current)
    else:
        params, opt_state = advance()
    if here is None:  # gated (batched runs): a run keeps what it measured unless it goes on
        params, opt_state = _select(go, (params, opt_state), current)
        prev = tuple(jnp.where(go, c, q) for c, q in zip(pack(current), state.prev))
    else:
        prev = tuple(jnp.where(go, h, q) for h, q in zip(here, state.prev))
        here = tuple(jnp.where(go, n, h) for n, h in zip(pack((params, opt_state)), here))
    if notes is not None:  # leaves the update passes on unchanged need no restoring
        notes["fixed"] = tuple(
            a is b for a, b in zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves(current))
        )
    # the last finite measurement; a run that is not finite at its start has none
    keep = back & (state.updates > 0)
    new = state._replace(
        params=params,
        opt_state=opt_state,
        prev=prev,
        step=state.step + (active & ~final).astype(jnp.int32),
        updates=jnp.maximum(state.updates + go.astype(jnp.int32) - back.astype(jnp.int32), 0),
        status=status,
        loss=jnp.where(active & ~keep, p.value, state.loss),
        grad_norm=jnp.where(active & ~keep, p.norm, state.grad_norm),
        perm=jnp.where(active, p.perm, state.perm) if spec.batch_size is not None else p.perm,
    )
    return new, here


def settle(state: State, here: tuple, fixed: tuple = ()) -> State:
    """The run as its last evaluation left it: a run that ended there returns the params it
    measured (``here``), or, when they were not finite, the ones before its last update
    (``state.prev``: the start, for a run that was not finite at once). A run still going
    keeps its updated params. The leaves marked ``fixed`` never change and are not
    restored."""
    like = (state.params, state.opt_state)
    ended = state.status != RUNNING
    chosen = tuple(jnp.where(state.status == NONFINITE, q, h) for q, h in zip(state.prev, here))
    params, opt_state = _select(ended, unpack(chosen, like, fixed), like)
    return state._replace(params=params, opt_state=opt_state)


def settle_gated(state: State, fixed: tuple = ()) -> State:
    """:func:`settle` for gated runs (their params are those they measured last): a run that
    ended not finite returns the params before its last update (``state.prev``)."""
    like = (state.params, state.opt_state)
    back = state.status == NONFINITE
    params, opt_state = _select(back, unpack(state.prev, like, fixed), like)
    return state._replace(params=params, opt_state=opt_state)


def _select(which, a, b):
    """The tree ``a`` where the scalar ``which`` holds, else ``b``: one select per leaf, none
    where both are the same value (a rule's hyperparameters, passed through its update)."""
    return jax.tree.map(lambda x, y: x if x is y else jnp.where(which, x, y), a, b)


def _full_norm(loss, data, params):
    return global_norm(jax.grad(loss)(params, data))


def finish(state: State, data, tol, *, loss) -> State:
    """The end of a mini-batch run: the loss and gradient norm at its params on the whole
    data. Not finite there: the run returns the params before its last update, ``NONFINITE``,
    and those are measured. A run that spent its budget ends ``CONVERGED`` when the
    whole-data gradient norm is below ``tol``, else ``MAX_STEPS``. (At most two
    measurements, in a loop of static length: reverse-differentiable, one copy of the
    loss in the program.)"""

    def measure_here(s):
        value, grads = measure(loss, s.params, data)
        value, norm = value.astype(s.loss.dtype), global_norm(grads).astype(s.loss.dtype)
        finite = jnp.isfinite(value) & jnp.isfinite(norm)
        status = decide(
            s.status,
            active=s.status == RUNNING,
            finite=finite,
            converged=finite & (norm < tol),
            stalled=False,
            budget=True,
        )
        back = ~finite & (s.status != NONFINITE) & (s.updates > 0)
        params, opt_state = jax.lax.cond(
            back,
            lambda: unpack(s.prev, (s.params, s.opt_state)),
            lambda: (s.params, s.opt_state),
        )
        s = s._replace(
            params=params,
            opt_state=opt_state,
            updates=s.updates - back.astype(jnp.int32),
            status=jnp.where(finite, status, NONFINITE).astype(jnp.int32),
            loss=value,
            grad_norm=norm,
        )
        return s, back

    def body(_, c):
        s, todo = c
        return jax.lax.cond(todo, measure_here, lambda s: (s, jnp.asarray(False)), s)

    state, _ = jax.lax.fori_loop(0, 2, body, (state, jnp.asarray(True)))
    return state


# --- the loops --------------------------------------------------------------------------------


def _record(history, i, value, norm, steps, spec: Spec, first_row):
    """Write evaluation ``i``'s row when ``i`` is recorded (``i % every == 0`` and
    ``i < steps``), else the scratch row past the recorded ones (cut off at the end)."""
    every = spec.record_every
    if not every:
        return history
    row = jnp.where((i % every == 0) & (i < steps), i // every - first_row, spec.rows)
    return tuple(
        jax.lax.dynamic_update_index_in_dim(h, x.astype(h.dtype), row, 0)
        for h, x in zip(history, (value, norm))
    )


def _recorded(history, rows: int):
    """The history without its scratch row. The optimization barrier keeps XLA from moving
    the cut into the loop (which then copied the buffer at every step)."""
    return tuple(h[:rows] for h in jax.lax.optimization_barrier(history))


def run(
    state: State,
    data,
    tol,
    steps,
    until,
    *,
    loss: Callable,
    optimizer: optax.GradientTransformation,
    spec: Spec,
    batched: bool = False,
):
    """Run ``state`` until it ends or reaches step ``until`` (``<= steps``).

    Returns ``(state, (losses, grad_norms))``: the history holds ``spec.rows`` rows for the
    recorded steps from the call's first step (``nan`` past the last one); with ``batched``
    the runs come first, ``(runs, rows)``. ``tol`` is ``-inf`` when no tolerance is set.
    """
    optimizer = as_extra_args(optimizer)
    tol = jnp.asarray(tol, state.loss.dtype)
    lead = state.status.shape
    every = spec.record_every
    # the recorded rows, and a scratch row that steps not recorded write
    history = tuple(jnp.full((spec.rows + 1, *lead), jnp.nan, state.loss.dtype) for _ in range(2))
    notes: dict = {}  # what tracing the step learned (:func:`commit`)
    one = functools.partial(commit, loss=loss, optimizer=optimizer, spec=spec, notes=notes)
    mini = spec.batch_size is not None
    full_norm = functools.partial(_full_norm, loss, data)
    start = state
    if not batched:
        here = pack((state.params, state.opt_state))
        first_row = -(-state.step // every) if every else 0

        def cond(c):
            return running_in_call(c[0], steps, until, spec)

        def body(c):
            s, here, history = c
            p = propose(s, data, loss=loss, spec=spec)
            confirm = p.norm
            if mini:  # a batch's norm below tol is confirmed on the whole data
                confirm = jax.lax.cond(
                    p.norm < tol,
                    lambda: full_norm(s.params).astype(p.norm.dtype),
                    lambda: jnp.full_like(p.norm, jnp.inf),
                )
            history = _record(history, s.step, p.value, p.norm, steps, spec, first_row)
            return *one(s, here, p, confirm, tol, steps, until), history

        state, here, history = jax.lax.while_loop(cond, body, (state, here, history))
        state = settle(state, here, notes.get("fixed", ()))
        if mini:
            ended = (start.status == RUNNING) & ((state.status != RUNNING) | (state.step == steps))
            state = jax.lax.cond(ended, lambda: finish(state, data, tol, loss=loss), lambda: state)
        return state, _recorded(history, spec.rows)

    vpropose = jax.vmap(functools.partial(propose, loss=loss, spec=spec), in_axes=(0, None))
    vcommit = jax.vmap(lambda s, p, c, t, n, u: one(s, None, p, c, t, n, u)[0],
                       in_axes=(0, 0, 0, None, None, None))  # fmt: skip
    vrunning = jax.vmap(running_in_call, in_axes=(0, None, None, None))
    # every run still going has made the same number of steps (runs advance together)
    i0 = jnp.max(jnp.where(state.status == RUNNING, state.step, 0))
    first_row = -(-i0 // every) if every else 0

    def bcond(c):
        return jnp.any(vrunning(c[0], steps, until, spec))

    def bbody(c):
        s, history, i = c
        active = vrunning(s, steps, until, spec)
        p = vpropose(s, data)
        confirm = p.norm
        if mini:
            candidate = active & (p.norm < tol)
            confirm = jax.lax.cond(
                jnp.any(candidate),
                lambda: jnp.where(candidate, jax.vmap(full_norm)(s.params), jnp.inf),
                lambda: jnp.full_like(p.norm, jnp.inf),
            ).astype(p.norm.dtype)
        shown = tuple(jnp.where(active, x, jnp.nan) for x in (p.value, p.norm))
        history = _record(history, i, *shown, steps, spec, first_row)
        # a run that has ended, or ends here, keeps what it measured (the update is gated)
        return vcommit(s, p, confirm, tol, steps, until), history, i + 1

    state, history, _ = jax.lax.while_loop(bcond, bbody, (state, history, i0))
    fixed = notes.get("fixed", ())
    state = jax.vmap(lambda s: settle_gated(s, fixed))(state)
    if mini:
        ended = (start.status == RUNNING) & ((state.status != RUNNING) | (state.step == steps))
        vfinish = jax.vmap(functools.partial(finish, loss=loss), in_axes=(0, None, None))
        state = jax.lax.cond(
            jnp.any(ended),
            lambda: _pick(ended, vfinish(state, data, tol), state),
            lambda: state,
        )
    return state, tuple(h.T for h in _recorded(history, spec.rows))


def _pick(which, a, b):
    """Per run, the tree ``a`` where ``which`` else ``b`` (run axis first)."""
    return jax.tree.map(
        lambda x, y: jnp.where(which.reshape(which.shape + (1,) * (x.ndim - 1)), x, y), a, b
    )
