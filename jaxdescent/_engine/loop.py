"""The compiled loop shared by :func:`jaxdescent.fit` and :func:`jaxdescent.multistart`.

One *chunk* is a ``lax.while_loop`` over up to ``chunk_len`` steps that stops as soon as the
run has ended (converged, out of steps, or non-finite); under ``vmap`` it stops once every
run has ended, and runs that ended earlier are frozen. Python only runs between chunks.

The chunk in which a run ends also measures its final params, so a configuration compiles
one program: full batch, the last params are evaluated by one more loop iteration whose
update is skipped (a converged run measured its params when it stopped); mini-batch, the
whole data is evaluated after the loop, under a ``lax.cond``.

Full batch, the common step carries no bookkeeping. One run takes its steps in unguarded
blocks, each step the hand-written loop's (measure, update; no ``lax.cond``, no roll-back
copy), from a snapshot taken once a block; a run that ends inside a block is taken again
from the block's start up to that step, by a second call of the same program
(``block_steps`` in :func:`_chunk`; results are bit for bit those of guarding every step).
Rules that report a stall (second-order ones, whose steps are few and costly) decide each
step before its update instead (``plain_steps``). Under ``vmap`` the runs take blocks of
unguarded steps together (no per-run select, no roll-back copy); the first step at which
some running run does not make a plain accept is not applied, ends the block, and is taken
with the per-run checks (``run_blocks``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdescent import data as data_lib
from jaxdescent._engine.cache import cached, fingerprint, owner_ref
from jaxdescent.losses import NLL
from jaxdescent.results import Status

# steps per while-loop iteration for mini-batch runs under vmap (amortises the loop's own
# overhead; full-batch runs take their common steps in an inner loop, :func:`_chunk`)
_UNROLL = 2


class Carry(NamedTuple):
    """Everything a run needs to continue; saved whole in checkpoints."""

    params: Any
    opt_state: Any
    prev_params: Any  # params before the last accepted update (restored on non-finite)
    prev_opt_state: Any  # the optimizer state that goes with ``prev_params``
    iteration: jax.Array  # loop iterations run (loss and gradient evaluations)
    updates: jax.Array  # updates applied to ``params``
    status: jax.Array
    key: jax.Array
    perm: jax.Array  # this epoch's example order (empty for full batch)


def as_extra_args(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return optimizer
    if _takes_extra_args(optimizer.update):  # e.g. optax.MultiSteps, which forwards them
        return optax.GradientTransformationExtraArgs(optimizer.init, optimizer.update)
    return optax.with_extra_args_support(optimizer)


def _takes_extra_args(update) -> bool:
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def make_step(loss: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One optimisation step: ``step(params, opt_state, batch=None, skip_update=False)``.

    Returns ``(new_params, new_opt_state, loss_value, grad_norm)``, where the loss and the
    gradient norm are those at the *incoming* params. ``batch=None`` calls ``loss(params)``,
    otherwise ``loss(params, batch)``. The optimizer receives ``value_fn`` (the loss on
    this batch as a function of params), ``value`` and ``grad`` as extra arguments, which
    second-order rules and line searches use (and optax's ``lbfgs``); for a loss built by
    :func:`jaxdescent.losses.nll`, also ``model_fn``, ``likelihood`` and ``targets``
    (:meth:`jaxdescent.losses.NLL.rule_extras`), which Gauss-Newton rules use.
    ``skip_update`` (a boolean, traced or not) returns the params and state unchanged: the
    loop's final evaluation measures the last params with the step's own code.
    """
    measure, update = _step_parts(loss, optimizer)

    def step(params, opt_state, batch=None, skip_update=False):
        value, grads = measure(params, batch)
        if skip_update is False:
            new_params, new_state = update(params, opt_state, batch, value, grads)
        else:  # the loop's final evaluation: the loss and gradient only
            new_params, new_state = jax.lax.cond(
                skip_update,
                lambda: (params, opt_state),
                lambda: update(params, opt_state, batch, value, grads),
            )
        return new_params, new_state, value, global_norm(grads)

    return step


def _step_parts(loss: Callable, optimizer: optax.GradientTransformation):
    """A step's two halves: ``measure(params, batch) -> (value, grads)`` and ``update(params,
    opt_state, batch, value, grads) -> (new_params, new_state)`` (see :func:`make_step`)."""
    opt = as_extra_args(optimizer)

    def value_fn_for(batch):
        return loss if batch is None else functools.partial(_call_with_batch, loss, batch)

    def measure(params, batch):
        return jax.value_and_grad(value_fn_for(batch))(params)

    def update(params, opt_state, batch, value, grads):
        extras = loss.rule_extras(batch) if isinstance(loss, NLL) and batch is not None else {}
        updates, new_state = opt.update(
            grads, opt_state, params, value_fn=value_fn_for(batch), value=value, grad=grads,
            **extras,
        )  # fmt: skip
        return optax.apply_updates(params, updates), new_state

    return measure, update


def global_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves together, ``sqrt(sum_i ||x_i||^2)``.

    A reduction per leaf (XLA:CPU compiles each as a kernel of its own). Joining the leaves
    end to end first compiles fewer kernels but runs slower: on the MLP benchmark the
    concatenation costs a quarter of a step, the per-leaf sums about 5%."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _call_with_batch(loss, batch, params):
    return loss(params, batch)


def init_carry(
    params, opt_state, key, n: int, batch_size: int | None, runs: tuple[int, ...] = ()
) -> Carry:
    """A run's carry at its start; with ``runs=(restarts,)``, stacked restarts (the params,
    state and keys then have that leading axis)."""
    # NumPy constants: eager ``jnp.zeros`` would compile a small program on first use, and
    # the compiled loop takes NumPy arguments at almost no cost (a ``device_put`` each would
    # cost ~30 us of host time)
    zero = np.zeros(runs, np.int32)
    perm_size = 0 if batch_size is None else n
    return Carry(
        params=params,
        opt_state=opt_state,
        prev_params=params,
        prev_opt_state=opt_state,
        iteration=zero,
        updates=zero,
        status=zero,
        key=key,
        perm=np.zeros((*runs, perm_size), np.int32),
    )


def _propose(c, data, new_epoch, final, *, step, batch_size, n, per_epoch):
    """One step of one run before any check: (new params, new state, loss, grad norm, perm).

    ``new_epoch`` (whether this step starts an epoch) is computed outside the ``vmap`` over
    runs, from the loop's own step count: a predicate derived from the (batched) carry would
    turn the ``lax.cond`` into a select, drawing a fresh permutation at every step.
    """
    if batch_size is None:
        batch, perm = data, c.perm
    else:
        within = c.iteration % per_epoch
        perm = jax.lax.cond(
            new_epoch,
            lambda: data_lib.epoch_permutation(c.key, c.iteration // per_epoch, n),
            lambda: c.perm,
        )
        batch = data_lib.take_batch(data, perm, within, batch_size)
    new_params, new_state, value, norm = step(c.params, c.opt_state, batch, final)
    return new_params, new_state, value, norm, perm


def _outcome(c, value, norm, confirm, tol, limit, final, stalled=False):
    """What a step means for one run: ``(finite, accept, iteration, status)``.

    ``stalled`` (full batch, rules that report it: :func:`stall_test`) says that the rule's
    state can no longer change the params: the run ends ``STALLED`` at the params it measured
    (unless they are not finite, or converged there).

    ``final`` marks the loop's final evaluation (full batch: one more iteration at the end
    that measures the last params and updates nothing): it ends the run ``MAX_STEPS`` unless
    the params converged there or are not finite. ``limit`` (mini-batch runs, whose final
    evaluation is on the whole data after the loop) ends a run ``MAX_STEPS`` at its last step.
    """
    finite = jnp.isfinite(value) & jnp.isfinite(norm)
    converged = finite & (norm < tol) & (confirm < tol)
    halted = finite & ~converged & stalled
    accept = finite & ~converged & ~halted & ~final
    iteration = c.iteration + jnp.where(final, 0, 1).astype(jnp.int32)
    budget = final if limit is None else final | (iteration >= limit)
    status = jnp.where(budget, Status.MAX_STEPS, Status.RUNNING)
    status = jnp.where(halted, Status.STALLED, status)
    status = jnp.where(converged, Status.CONVERGED, status)
    status = jnp.where(finite, status, Status.NONFINITE).astype(jnp.int32)
    return finite, accept, iteration, status


def _counted(updates, accept, finite):
    """Updates applied after this step: one more if accepted, one fewer if the params are
    rolled back to before the last update (never below zero: a non-finite start has none)."""
    counted = updates + accept.astype(jnp.int32) - (~finite).astype(jnp.int32)
    return jnp.maximum(counted, 0)


def _commit(c, proposal, confirm, tol, limit, final, stalled=False):
    """The next carry of one run: accept the proposal, stop converged, or roll back.

    ``confirm`` is the full-data gradient norm at the incoming params when this step's
    (batch) norm fell below ``tol`` (for full-batch runs, the norm itself): a run converges
    only when both are below ``tol``. The trees are chosen with ``lax.cond``, whose branches
    only pass buffers on: for one run the program then holds no select per leaf of the
    params and optimizer state (each a kernel to compile and a copy at every step); under
    ``vmap`` over runs the conds become exactly those per-run selects.
    """
    new_params, new_state, value, norm, perm = proposal
    finite, accept, iteration, status = _outcome(
        c, value, norm, confirm, tol, limit, final, stalled
    )
    trees = jax.lax.cond(
        accept,
        lambda: (new_params, new_state, c.params, c.opt_state),
        lambda: jax.lax.cond(
            finite,
            lambda: (c.params, c.opt_state, c.prev_params, c.prev_opt_state),
            lambda: (c.prev_params, c.prev_opt_state, c.prev_params, c.prev_opt_state),
        ),
    )
    return Carry(
        *trees,
        iteration=iteration,
        updates=_counted(c.updates, accept, finite),
        status=status,
        key=c.key,
        perm=perm,
    )


def _settle(c, value, norm, tol, final, stalled):
    """:func:`_commit` for one full-batch run at a step it does not accept (non-finite,
    converged, stalled, or the final evaluation): the run ends there, at its params, or at
    the ones before its last update when the loss or gradient is not finite. (No update was
    proposed, so only that one choice is compiled.)"""
    finite, _, iteration, status = _outcome(c, value, norm, norm, tol, None, final, stalled)
    params, opt_state = jax.lax.cond(
        finite,
        lambda: (c.params, c.opt_state),
        lambda: (c.prev_params, c.prev_opt_state),
    )
    return c._replace(
        params=params,
        opt_state=opt_state,
        iteration=iteration,
        updates=_counted(c.updates, jnp.zeros((), bool), finite),
        status=status,
    )


def _commit_all_accepted(c, proposal, limit):
    """:func:`_commit` when every run is running and accepts its step (no selects needed)."""
    new_params, new_state, _, _, perm = proposal
    iteration = c.iteration + 1
    status = (
        Status.RUNNING
        if limit is None
        else jnp.where(iteration >= limit, Status.MAX_STEPS, Status.RUNNING)
    )
    return Carry(
        params=new_params,
        opt_state=new_state,
        prev_params=c.params,
        prev_opt_state=c.opt_state,
        iteration=iteration,
        updates=c.updates + 1,
        status=jnp.broadcast_to(jnp.asarray(status, jnp.int32), c.status.shape),
        key=c.key,
        perm=perm,
    )


def history_dtype(params) -> jnp.dtype:
    """Histories are kept in the params' float type, at least float32 (a float16 run's loss
    of 1e5 is then not recorded as inf)."""
    return jnp.promote_types(jnp.result_type(*jax.tree.leaves(params)), jnp.float32)


def recorded_rows(first: int, ran: int, every: int) -> int:
    """How many of the steps ``first, ..., first + ran - 1`` are recorded (``step % every ==
    0``; none when ``every == 0``)."""
    if every == 0:
        return 0
    return -(-(first + ran) // every) - -(-first // every)


def _full_norm(loss, data, params):
    return global_norm(jax.grad(loss)(params, data))


def _chunk(
    carry,
    data,
    tol,
    total_steps,
    chunk_steps,
    barrier_at,
    *,
    loss,
    optimizer,
    batch_size,
    chunk_len,
    batched,
    record_every,
):
    """Run up to ``chunk_steps`` (<= ``chunk_len``) steps; record loss and gradient norm.

    ``barrier_at`` (one run in blocks, ``block_steps``: ``chunk_steps`` for a chunk, the step
    to settle when a run is taken again) is where the blocks end.

    Returns ``(carry, (losses, norms), ran, final_loss, final_grad_norm, spare, redo)``.
    ``spare`` and ``redo`` (``[pick, again, barrier]``) tell the host how to arrange a run
    left by ``block_steps`` and whether to call again from it
    (:func:`jaxdescent._engine.driver._arrange`); other paths return ``None`` and zeros.
    The history holds the rows of the recorded steps (step ``s`` is recorded when
    ``s % record_every == 0``; nothing when ``record_every == 0``), then the number of loop
    steps run, and for each run that ended in this chunk the loss and gradient norm at its
    returned params (``nan`` for runs still going, and for runs rolled back from non-finite
    params, which the host then evaluates). With ``batched``, ``carry`` has a leading run
    axis: the loop's condition stays a scalar (some run still going), each step is
    ``vmap``-ed over the runs, and a run that has ended keeps its carry and history.
    (Vmapping the whole while loop instead would make its predicate batched, and then every
    step would copy the whole history buffer.)
    """
    n = 0 if data is None else data_lib.num_examples(data)
    per_epoch = None if batch_size is None else data_lib.batches_per_epoch(n, batch_size)
    propose = functools.partial(
        _propose, step=make_step(loss, optimizer), batch_size=batch_size, n=n, per_epoch=per_epoch
    )
    measure, update = _step_parts(loss, optimizer)
    dtype = history_dtype(carry.params)
    lead = carry.status.shape  # () for one run, (runs,) when batched
    # history rows are recorded steps, so each step writes one contiguous row; steps that are
    # not recorded (and, batched, the gated steps past the chunk's end) write a scratch row
    # past the end (one run; cut off at the end) or write a row back as it was (restarts)
    unroll = _UNROLL if batched else 1
    every = record_every
    # at most ceil(chunk_len / every) multiples of ``every`` lie in a chunk's steps: a
    # whole-run chunk's history then has exactly its recorded rows (no cut needed)
    rows = 0 if every == 0 else -(-chunk_len // every)
    # Restarts have no scratch row: a step that is not recorded writes a row back as it was
    # (their history leaves the program transposed, and cutting a scratch row off in the
    # same copy made XLA:CPU transpose it element by element, 1,024 restarts x 1,000 steps
    # about 2.5 ms slower)
    spare_row = 0 if batched else 1
    history = (
        jnp.full((rows + spare_row, *lead), jnp.nan, dtype),
        jnp.full((rows + spare_row, *lead), jnp.nan, dtype),
    )
    if batched:
        # the run axis stays first (moving it last, to the minor axis, made XLA transpose
        # the params and state back inside the loop: about 10% slower on 1,024 Rosenbrock
        # restarts, no faster where restarts stop one after another)
        vpropose = jax.vmap(propose, in_axes=(0, None, None, None), out_axes=0)
        vcommit = jax.vmap(_commit, in_axes=(0, 0, 0, None, None, None, 0), out_axes=0)

    # Every run still going has made exactly ``first + i`` steps at loop step ``i`` (runs
    # advance together and ended ones are frozen), so this scalar says when epochs start.
    first = jnp.max(carry.iteration)
    first_row = 0 if every == 0 else -(-first // every)
    # Full batch, a run's last params are evaluated by one more loop iteration that updates
    # nothing (the step's own loss and gradient code: no second copy in the program). The
    # whole-data evaluation of mini-batch runs comes after the loop instead (:func:`_finish`).
    in_loop_end = batch_size is None
    limit = None if in_loop_end else total_steps

    def final(i):  # a scalar: whether loop step ``i`` is the final evaluation
        return (first + i >= total_steps) if in_loop_end else False

    def row(i):  # where step ``first + i`` is recorded: its row, or the scratch row
        if every == 0:
            return rows
        s = first + i
        return jnp.where((s % every == 0) & (i < chunk_steps), s // every - first_row, rows)

    def row_of(i, in_chunk):
        return i if (in_chunk and every == 1) else row(i)

    def confirm(norm, params, active):
        """The full-data gradient norm where a batch's norm fell below ``tol`` (else inf)."""
        if batch_size is None:
            return norm
        full = functools.partial(_full_norm, loss, data)
        if batched:
            full = jax.vmap(full, in_axes=0)
        candidate = active & (norm < tol)
        return jax.lax.cond(
            jnp.any(candidate),
            lambda: jnp.where(candidate, full(params), jnp.inf).astype(norm.dtype),
            lambda: jnp.full_like(norm, jnp.inf),
        )

    # full batch, a rule may report that its state can no longer change the params
    test = stall_test(optimizer) if batch_size is None else None

    def stalled(opt_state):  # per run
        if test is None:
            return jnp.zeros(lead, bool)
        return jax.vmap(test, in_axes=0)(opt_state) if batched else test(opt_state)

    def starts_epoch(i):
        return False if per_epoch is None else (first + i) % per_epoch == 0

    def cond(state):
        c, _, i, _ = state
        return ((i < chunk_steps) | final(i)) & jnp.any(c.status == Status.RUNNING)

    def body(state):
        for _ in range(unroll):
            state = sub_step(state)
        return state

    def ended_here(c, new_c):
        """Runs that end at this step at params it measured (converged, or the final
        evaluation): their loss and gradient norm are the run's final ones. A run rolled
        back (non-finite) did not measure its returned params; the host does."""
        return (
            (c.status == Status.RUNNING)
            & (new_c.status != Status.RUNNING)
            & (new_c.status != Status.NONFINITE)
        )

    def sub_step(state):
        c, history, i, ends = state
        new_c, (value, norm), ends = checked_step(c, i, ends)
        return new_c, record(history, i, value, norm), i + 1, ends

    def checked_step(c, i, ends):
        """Loop step ``i`` with the per-run checks: ``(carry, (loss, norm) row, ends)``."""
        if batched:
            # past the chunk's end no run is active: the step then changes nothing
            active = (c.status == Status.RUNNING) & ((i < chunk_steps) | final(i))
            proposal = vpropose(c, data, starts_epoch(i), final(i))
            _, _, value, norm, _ = proposal
            value, norm = value.astype(dtype), norm.astype(dtype)
            full = confirm(norm, c.params, active)
            stuck = stalled(c.opt_state)

            def some_stop():
                new_c = vcommit(c, proposal, full, tol, limit, final(i), stuck)
                # runs that have ended keep their carry (the key never changes in a step)
                new_c = _pick(active, new_c._replace(key=None), c._replace(key=None))
                new_c = new_c._replace(key=c.key)
                ended = ended_here(c, new_c) if in_loop_end else False
                new_ends = tuple(jnp.where(ended, x, e) for x, e in zip((value, norm), ends))
                # an ended run's row stays nan (reading the old row would copy the buffer)
                rows = tuple(jnp.where(active, x, jnp.nan) for x in (value, norm))
                return new_c, new_ends, rows

            # Usually every run goes on: then the per-run selects (slow under vmap on CPU)
            # are skipped (no run ends, every row is written); the result is the same.
            all_go = ~final(i) & jnp.all(
                active
                & jnp.isfinite(value)
                & jnp.isfinite(norm)
                & ~((norm < tol) & (full < tol))
                & ~stuck
            )
            new_c, ends, (value, norm) = jax.lax.cond(
                all_go,
                lambda: (_commit_all_accepted(c, proposal, limit), ends, (value, norm)),
                some_stop,
            )
        else:
            proposal = propose(c, data, starts_epoch(i), final(i))
            _, _, value, norm, _ = proposal
            full = confirm(norm, c.params, True)
            new_c = _commit(c, proposal, full, tol, limit, final(i), stalled(c.opt_state))
            # one run: the last measurement, judged after the loop
            ends = (value.astype(dtype), norm.astype(dtype))
        return new_c, (value, norm), ends

    def record(history, i, value, norm, in_chunk=False):
        """Write step ``i``'s row. ``in_chunk``: ``i`` is a step of this chunk or its final
        evaluation (one run, full batch), so with ``every == 1`` its row is ``i`` itself
        (the final evaluation's, past the recorded rows, is cut off with them), and with no
        history the one scratch row is written (:func:`block_steps` reads it back).
        Restarts have no scratch row: a step not recorded writes the last row back as it
        was (``in_chunk`` is then only for steps of the chunk with ``every == 1``)."""
        if not every and not in_chunk:
            return history
        r = row_of(i, in_chunk)
        if batched and not (in_chunk and every == 1):  # no scratch row: write a row back
            unrecorded = r >= rows
            r = jnp.minimum(r, rows - 1)
            value, norm = (
                jnp.where(unrecorded, jax.lax.dynamic_index_in_dim(h, r, 0, False), x)
                for h, x in zip(history, (value, norm))
            )
        return tuple(
            jax.lax.dynamic_update_index_in_dim(h, x.astype(dtype), r, 0)
            for h, x in zip(history, (value, norm))
        )

    def plain_steps(state):
        """Full batch, one run: steps until one needs a decision, then that decision.

        A step's loss and gradient are measured before its update, so whether the run goes
        on is known first: the update (and the roll-back copy of the params and state it
        replaces) runs under one ``lax.cond``, and the loop stops at the first step that is
        not a plain accept (non-finite, converged, stalled, or the final evaluation). That
        step's outcome is then settled once, by :func:`_settle`, outside the per-step path.
        """
        c0, history, i0, ends = state

        def go_on(s):
            _, _, i, ok, _ = s
            return ok & ((i < chunk_steps) | final(i))

        def plain_step(s):
            c, history, i, _, _ = s
            value, grads = measure(c.params, data)
            norm = global_norm(grads)
            value, norm = value.astype(dtype), norm.astype(dtype)
            ok = jnp.isfinite(value) & jnp.isfinite(norm) & ~(norm < tol) & ~final(i)
            ok = ok & ~stalled(c.opt_state)

            def advance():
                new_params, new_state = update(c.params, c.opt_state, data, value, grads)
                return new_params, new_state, c.params, c.opt_state

            def stay():
                return c.params, c.opt_state, c.prev_params, c.prev_opt_state

            trees = jax.lax.cond(ok, advance, stay)
            moved = ok.astype(jnp.int32)
            c = c._replace(
                params=trees[0],
                opt_state=trees[1],
                prev_params=trees[2],
                prev_opt_state=trees[3],
                iteration=c.iteration + moved,
                updates=c.updates + moved,
            )
            return c, record(history, i, value, norm), i + moved, ok, (value, norm)

        start = (c0, history, i0, jnp.asarray(True), ends)
        c, history, i, ok, (value, norm) = jax.lax.while_loop(go_on, plain_step, start)

        def settle():  # the step that was not a plain accept: stop, converge or roll back
            return (
                _settle(c, value, norm, tol, final(i), stalled(c.opt_state)),
                i + 1,
                (value, norm),
            )

        c, i, ends = jax.lax.cond(ok, lambda: (c, i, ends), settle)
        return c, history, i, ends

    block_len = block_length(carry.params, data)

    def block_steps(state):
        """Full batch, one run of a rule without a stall test: blocks of unguarded steps.

        Inside a block each step is the hand-written loop's (measure, then update, with no
        ``lax.cond`` between them and no roll-back copy); the loop only notes whether the
        step was a plain accept (finite, not converged, not the final evaluation) and stops
        after the first that was not. A block starts from a copy of the params and state at
        its first step ``b`` (``snap``), and the previous block's start (``old``, step
        ``o``) is kept. The loop stops after a block that was not clean, or at the chunk's
        end, whose last block is its single last step (so a run going on returns the params
        before its last update as ``snap``).

        Where the run ended at step ``u``: if ``u`` was the first step of a block that came
        after a single-step block, it is settled at ``snap`` (converged or final) or at
        ``old`` (not finite: the params before the last update). Otherwise the host takes
        the run again from ``snap`` (or from ``old`` when ``u == b``) with a barrier at
        ``u``: the blocks then end at ``u - 1`` and ``u``, and step ``u`` is settled. Steps
        taken again are the same code on the same inputs, so results, statuses and
        histories are those of guarding every step, bit for bit; a run that ends inside a
        block costs at most two blocks more (:func:`block_length`).

        No tree is chosen in the program: in prototypes on the MLP benchmark, a ``lax.cond``
        choosing among these trees (inside the outer loop or after it) made XLA:CPU run
        every step of the inner loop about a quarter slower, and a select per leaf compiles
        a kernel per leaf (0.52 -> 0.81 s). The host picks instead
        (:func:`jaxdescent._engine.driver._arrange`), from ``(carry, spare, redo)``:
        ``carry.params`` is the last block's end, ``carry.prev_params`` its start and
        ``spare`` the block before.
        """
        c0, history, _, _ = state

        def free(p, s, history, start, count):
            def go_on(t):
                return t[4] & (t[3] < start + count)

            def free_step(t):
                p, s, history, j, _ = t
                value, grads = measure(p, data)
                norm = global_norm(grads)
                value, norm = value.astype(dtype), norm.astype(dtype)
                ok = jnp.isfinite(value) & jnp.isfinite(norm) & ~(norm < tol) & ~final(j)
                new_p, new_s = update(p, s, data, value, grads)
                # the step's loss and norm are read back from its row: carrying them out of
                # the loop as values made every step of the MLP benchmark ~7% slower
                history = record(history, j, value, norm, in_chunk=True)
                return new_p, new_s, history, j + 1, ok

            start_state = (p, s, history, start, jnp.asarray(True))
            return jax.lax.while_loop(go_on, free_step, start_state)

        def go_on(st):
            _, _, _, j, _, _, _, _, ok = st
            return ok & ((j < chunk_steps) | final(j))

        def block(st):
            # ``cur`` (step j) is where the last block ended clean: the next one starts there
            cur, snap, _, j, b, _, barrier, history, _ = st
            snap, old, b, o = cur, snap, j, b
            count = jnp.where(b < barrier - 1, jnp.minimum(block_len, barrier - 1 - b), 1)
            # everything the block starts from is settled before the inner loop runs: without
            # this barrier, XLA:CPU ran every step of the MLP benchmark's inner loop about 8%
            # slower inside the outer loop than alone (same HLO for the loop body)
            snap, old, history, b, count = jax.lax.optimization_barrier(
                (snap, old, history, b, count)
            )
            p, s, history, j, ok = free(*snap, history, b, count)
            return (p, s), snap, old, j, b, o, barrier, history, ok

        zero = jnp.zeros((), jnp.int32)
        previous = (c0.prev_params, c0.prev_opt_state)
        start = (
            (c0.params, c0.opt_state),  # as if a clean block had ended at step 0 ...
            previous,  # ... having started at step -1
            previous,
            zero,
            zero - 1,
            zero - 2,
            jnp.asarray(barrier_at, jnp.int32),
            history,
            jnp.asarray(True),
        )
        cur, snap, old, j, b, o, _, history, ok = jax.lax.while_loop(go_on, block, start)
        u = j - 1  # when not clean: the step where the run ended
        value, norm = (jax.lax.dynamic_index_in_dim(h, row_of(u, True), 0, False) for h in history)
        settle = ~ok & (u == b) & (o == b - 1)
        again_from_old = ~ok & (u == b) & ~settle
        again = ~ok & ~settle
        finite, _, iteration, status = _outcome(
            c0._replace(iteration=c0.iteration + u, updates=c0.updates + u),
            value,
            norm,
            norm,
            tol,
            None,
            final(u),
        )
        # where the returned run stands: the chunk's end, the settled step (the one before
        # when not finite), or where it is taken again from
        at = jnp.where(
            ok, j, jnp.where(settle, jnp.where(finite, u, u - 1), jnp.where(again_from_old, o, b))
        )
        pick = jnp.where(ok, 0, jnp.where(again_from_old | (settle & ~finite), 2, 1))
        no_roll_back = jnp.zeros((), bool)
        carry = c0._replace(
            params=cur[0],
            opt_state=cur[1],
            prev_params=snap[0],
            prev_opt_state=snap[1],
            iteration=jnp.where(settle, iteration, c0.iteration + at),
            updates=jnp.where(
                settle, _counted(c0.updates + u, no_roll_back, finite), c0.updates + at
            ),
            status=jnp.where(settle, status, c0.status),
        )
        redo = jnp.stack([pick, again.astype(jnp.int32), u - at]).astype(jnp.int32)
        return carry, history, (value, norm), old, redo

    def run_blocks(state):
        """Full batch under ``vmap``: blocks of unguarded steps, and a guarded step where a
        run ends.

        Inside a block every run takes the hand-written loop's step (no per-run select, no
        roll-back copy; runs that ended before take part in the arithmetic and are restored
        after the block). Each step notes whether every running run makes a plain accept
        (finite, not converged, not stalled); the first step at which one does not is not
        applied (its update is dropped by a select on that one flag, which XLA fuses into
        the update) and ends the block. That step ``u`` is then taken again by the guarded
        :func:`sub_step` (per-run checks and selects), unless some run's loss or gradient
        was not finite there: that run goes back to its params before step ``u``, which the
        block no longer holds, so the block is dropped and its steps are taken again up to
        ``u`` (a ``barrier``), the last of them as a block of its own (or, when ``u`` was the
        block's first step, from the previous block's start, ``old``, unless that block was
        that single step). The chunk's last step before its end is a block of its own too,
        so the carry's previous params are the ones before the last update; the final
        evaluation is a guarded step. Steps taken again are the same code on the same
        inputs, so results, statuses and histories are those of guarding every step, bit for
        bit. (The previous params kept for a run that ended converged, stalled or out of
        budget may be an earlier step's: a run going on again measures its params before
        any update, so they are never read.)
        """
        c0, history, _, ends = state
        vmeasure = jax.vmap(measure, in_axes=(0, None))
        vupdate = jax.vmap(update, in_axes=(0, 0, None, 0, 0))
        vnorm = jax.vmap(global_norm)

        def free(p, s, history, start, count, running):
            def go_on(t):
                return t[4] & (t[3] < start + count)

            def free_step(t):
                p, s, history, j, _, _ = t
                value, grads = vmeasure(p, data)
                norm = vnorm(grads)
                value, norm = value.astype(dtype), norm.astype(dtype)
                finite = jnp.isfinite(value) & jnp.isfinite(norm)
                fine = finite & ~(norm < tol) & ~stalled(s)
                ok = jnp.all(fine | ~running)
                new = vupdate(p, s, data, value, grads)
                p, s = jax.tree.map(lambda x, y: jnp.where(ok, x, y), new, (p, s))
                # an ended run's row stays nan
                shown = (jnp.where(running, value, jnp.nan), jnp.where(running, norm, jnp.nan))
                # (its steps are the chunk's: with ``every == 1`` each has a row of its own)
                history = record(history, j, *shown, in_chunk=every == 1)
                # per run, reduced once after the loop
                return p, s, history, j + ok, ok, running & ~finite

            start_state = (p, s, history, start, jnp.asarray(True), jnp.zeros(lead, bool))
            return jax.lax.while_loop(go_on, free_step, start_state)

        def go_on(st):
            c, _, _, _, j, _, _ = st
            return ((j < chunk_steps) | final(j)) & jnp.any(c.status == Status.RUNNING)

        def block(st):
            c, old, o, history, b, barrier, ends = st
            running = c.status == Status.RUNNING
            room = barrier - 1 - b
            # a block taken again is known to be clean: one block up to the barrier
            again = barrier < chunk_steps
            count = jnp.where(room > 0, jnp.where(again, room, jnp.minimum(block_len, room)), 1)
            count = jnp.where(b < barrier, count, 0)
            p, s, history, j, ok, bad = free(c.params, c.opt_state, history, b, count, running)
            # not clean: ``j`` is the step ``u`` that needs the per-run checks; when some run
            # was not finite there, the block is taken again up to it
            redo = ~ok & jnp.any(bad)
            to_old = redo & (j == b) & (o < b - 1)
            take = running & ~redo
            now = (c.params, c.opt_state)
            back = running & to_old
            params, opt_state = _pick(take, (p, s), _pick(back, old, now))
            prev = _pick(take & (j > b), now, (c.prev_params, c.prev_opt_state))
            moved = jnp.where(take, j - b, 0) - jnp.where(back, b - o, 0)
            c = c._replace(
                params=params,
                opt_state=opt_state,
                prev_params=prev[0],
                prev_opt_state=prev[1],
                iteration=c.iteration + moved,
                updates=c.updates + moved,
            )
            # after a block taken again, ``old`` is not read before the guarded step sets it
            old, o = now, jnp.where(ok & (count > 0), b, o)
            barrier = jnp.where(ok, barrier, j)
            j = jnp.where(redo, jnp.where(to_old, o, b), j)
            return c, old, o, history, j, barrier, ends

        def guarded(st):
            """Step ``u`` with the per-run checks when it is the barrier (else nothing)."""
            c, old, o, history, u, barrier, ends = st
            here = u == barrier
            # the carry (not the history) passes through this ``lax.cond``
            c, shown, ends = jax.lax.cond(
                here, lambda: checked_step(c, u, ends), lambda: (c, (nan, nan), ends)
            )
            history = record(history, jnp.where(here, u, chunk_steps + 1), *shown)
            # after it, ``prev`` is exact: step ``u + 1``'s start is one step back
            o = jnp.where(here, u, o)
            barrier = jnp.where(here, chunk_steps, barrier)
            return c, old, o, history, u + here, barrier, ends

        def outer(st):
            # no ``lax.cond`` between the block and the guarded step: a history buffer
            # passed through one was copied whole at every guarded step
            return guarded(block(st))

        zero = jnp.zeros((), jnp.int32)
        start = (
            c0,
            (c0.prev_params, c0.prev_opt_state),  # as if a single-step block ended at step 0
            zero - 1,
            history,
            zero,
            jnp.asarray(chunk_steps, jnp.int32),
            ends,
        )
        c, _, _, history, j, _, ends = jax.lax.while_loop(go_on, outer, start)
        return c, history, j, ends

    nan = jnp.full(lead, jnp.nan, dtype)
    start = (carry, history, jnp.zeros([], jnp.int32), (nan, nan))
    spare, redo = None, np.zeros(3, np.int32)  # (see ``block_steps``)
    if in_loop_end and not batched:
        # one run, full batch: block_steps (or, for a rule with a stall test, plain_steps)
        # runs until the run ends or the chunk does, so an outer loop would make exactly one
        # iteration (the driver only runs a chunk for a run still going, chunk_steps >= 1)
        if test is None:
            carry, history, (value, norm), spare, redo = block_steps(start)
        else:
            carry, history, _, (value, norm) = plain_steps(start)
        ended = ended_here(start[0], carry)
        value, norm = (jnp.where(ended, x, jnp.nan) for x in (value, norm))
    elif in_loop_end:  # batched, full batch
        carry, history, _, (value, norm) = run_blocks(start)
    else:
        carry, history, _, (value, norm) = jax.lax.while_loop(cond, body, start)
    ran = jnp.max(carry.iteration) - first
    if not in_loop_end:
        # mini-batch: once no run is still going, the final params are evaluated on the
        # whole data and checked (:func:`_finish`), in this program
        finish = functools.partial(_finish, data=data, tol=tol, loss=loss)
        if batched:
            finish = jax.vmap(finish)

        def ended():
            c, v, g = finish(carry)
            return c, v.astype(dtype), g.astype(dtype)

        carry, value, norm = jax.lax.cond(
            jnp.any(carry.status == Status.RUNNING), lambda: (carry, nan, nan), ended
        )
    # One run: the scratch row is cut off here, after an optimization barrier (without it,
    # slicing made XLA slow every step of the loop, the MLP benchmark's by about a quarter);
    # a whole run's history then leaves as it is, with no cut and no copy back on the host.
    # Restarts: no scratch row, so no cut; the runs go first. (Transposing in a program of
    # its own instead was faster alone but slower end to end.)
    if batched:
        history = tuple(h.T for h in history)
    else:
        history = tuple(h[:rows] for h in jax.lax.optimization_barrier(history))
    return carry, history, ran, value, norm, spare, redo


def _pick(which, a, b):
    """Per run, the tree ``a`` where ``which`` else ``b`` (run axis first)."""
    return jax.tree.map(
        lambda x, y: jnp.where(which.reshape(which.shape + (1,) * (x.ndim - 1)), x, y), a, b
    )


def _value_at(loss, data, params):
    return loss(params) if data is None else loss(params, data)


def evaluate(carry, data, *, loss):
    """Loss and gradient norm at ``carry.params`` on the whole data."""
    value, grads = jax.value_and_grad(functools.partial(_value_at, loss, data))(carry.params)
    return value, global_norm(grads)


def _finish(carry, data, tol, *, loss):
    """The end of a run: loss and gradient norm at the final params on the whole data.

    The last update of a run is never evaluated inside the loop, so its params are checked
    here: if the loss or the gradient is not finite there, the run returns the params before
    that update (where both were finite) with status ``NONFINITE``; the value and norm
    returned are then those at the rejected params, and the host evaluates the returned ones
    (:func:`evaluate`, a rare path kept out of the loop's program). A run that spent its
    budget (``MAX_STEPS``) but whose final full-data gradient norm is below ``tol`` has met
    the criterion: its status becomes ``CONVERGED``.
    """
    value, norm = evaluate(carry, data, loss=loss)
    bad = ~(jnp.isfinite(value) & jnp.isfinite(norm))
    # a cond, not selects per leaf (under vmap over runs it becomes those selects)
    params, opt_state = jax.lax.cond(
        bad,
        lambda: (carry.prev_params, carry.prev_opt_state),
        lambda: (carry.params, carry.opt_state),
    )
    status = jnp.where(bad, Status.NONFINITE, carry.status)
    status = jnp.where((status == Status.MAX_STEPS) & (norm < tol), Status.CONVERGED, status)
    updates = carry.updates - (bad & (carry.status != Status.NONFINITE)).astype(jnp.int32)
    carry = carry._replace(params=params, opt_state=opt_state, status=status.astype(jnp.int32))
    return carry._replace(updates=jnp.maximum(updates, 0)), value, norm


# XLA:CPU options for the loops of second-order rules (marked by
# :func:`jaxdescent.optim._common.curvature_rule`), whose runs take few, expensive steps, so
# that compiling is most of a cold call. The older fusion emitters compile such a loop in
# about two thirds of the time and run it at about the same speed (NIST suite, both starts of
# 18 problems: LM 15.0 -> 9.9 s cold, 1.60 -> 1.71 s warm; trust-region newton 23.1 -> 14.2 s
# cold, 1.79 -> 1.68 s warm). First-order loops keep the defaults: their many cheap steps run
# 20-30% faster with the newer emitters.
LATENCY_OPTIONS = {"xla_cpu_use_fusion_emitters": False}

# When such a run's step is also small, LLVM does not optimise the generated code: on the
# NIST suite LM's cold total falls by another quarter (3.70 -> 2.68 s on its first eight
# problems, both starts) and its warm total stays the same (40 ms). Unoptimised code runs a
# step slower, about 40 us more on a NIST problem (saddle_free_newton's 2,000-step runs: warm
# 1.3 -> 3.6 s over the suite, less than the compile time saved; a run of many thousand such
# steps loses more than it saves) and twice as slow on a large step (newton, logistic
# regression n = 20000, d = 100: 210 -> 453 ms warm). So a step is small when one run's
# parameters x the data numbers it reads are at most SMALL_WORK. The choice depends on shapes
# only, never on the step budget: a run extended by resuming computes what one longer run
# computes, bit for bit, and a restart what its own fit does.
SMALL_WORK = 1 << 17
SMALL_OPTIONS = {**LATENCY_OPTIONS, "xla_backend_optimization_level": 0}


def small_run(params, data, batch_size: int | None, batched: bool = False) -> bool:
    """Whether one run's step is small (see ``SMALL_WORK``): its parameters times the data
    numbers one step reads (a Jacobian's size for least squares). With ``batched`` the
    params have a leading run axis, which does not count."""
    leaves = jax.tree.leaves(params)
    runs = max(int(np.shape(leaves[0])[0]), 1) if batched and leaves else 1
    n_data = sum(int(np.size(x)) for x in jax.tree.leaves(data))
    if batch_size is not None and data is not None:
        n_data = -(-n_data * batch_size // max(data_lib.num_examples(data), 1))
    return _step_work(params, n_data) // runs <= SMALL_WORK


def _step_work(params, n_data: int) -> int:
    """Parameters (over all runs) times the data numbers a step reads (at least one)."""
    return sum(int(np.size(x)) for x in jax.tree.leaves(params)) * max(n_data, 1)


# The unguarded blocks of a chunk (:func:`_chunk`: one run's, or the restarts' together)
# last about BLOCK_SECONDS: a block costs a few copies of the params and state and a loop
# iteration (~10-20 us on CPU for one run, about 0.1-1% of the block's steps), and a run
# that ends inside a block takes at most two blocks again (restarts: only a run that is not
# finite there). Per step on one CPU core: about STEP_SECONDS plus WORK_SECONDS per unit of
# work (:func:`_step_work`, all runs together).
BLOCK_SECONDS = 1e-3
STEP_SECONDS = 2e-6
WORK_SECONDS = 1e-11
BLOCK_RANGE = (8, 256)


def block_length(params, data) -> int:
    """Steps per unguarded block (a power of two in ``BLOCK_RANGE``), from shapes only: the
    results do not depend on it, only how much a run that ends mid-block takes again."""
    n_data = sum(int(np.size(x)) for x in jax.tree.leaves(data))
    per_step = STEP_SECONDS + WORK_SECONDS * _step_work(params, n_data)
    steps = max(BLOCK_SECONDS / per_step, 1.0)
    low, high = BLOCK_RANGE
    return int(min(max(2 ** int(np.log2(steps)), low), high))


def stall_test(optimizer) -> Callable | None:
    """The rule's test ``stalled(opt_state) -> bool`` (``None`` when it reports none).

    A rule sets it (:func:`jaxdescent.optim._common.curvature_rule`) when its state can show
    that no later update will change the params, e.g. a trust radius that fell below the
    params' rounding with no step taken. Full-batch runs then end ``STALLED`` at once instead
    of spending the rest of their budget standing still.
    """
    return getattr(optimizer.update, "stalled", None)


def _compiler_options(optimizer, small: bool) -> dict | None:
    if getattr(optimizer.update, "compile_for_latency", False) and jax.default_backend() == "cpu":
        return SMALL_OPTIONS if small else LATENCY_OPTIONS
    return None


def compiled(
    loss,
    optimizer,
    batch_size,
    chunk_len,
    batched: bool,
    record_every: int = 1,
    small: bool = False,
):
    """The jitted chunk function for one configuration (cached: no retrace).

    Keyed by the loss (held weakly), the optimizer's ``update`` by fingerprint (code and
    closed-over values, :func:`jaxdescent._engine.cache.fingerprint`) and the static settings.
    ``small`` (:func:`small_run`) picks the compile options of second-order rules' loops.
    """
    key = (
        "loop",
        fingerprint(optimizer.update),
        # marks a rule carries on its update (custom rules may share an update's code)
        fingerprint(stall_test(optimizer)),
        bool(getattr(optimizer.update, "compile_for_latency", False)),
        batch_size,
        chunk_len,
        batched,
        record_every,
        small,
    )
    return cached(
        loss,
        key,
        lambda: _build(
            owner_ref(loss), optimizer, batch_size, chunk_len, batched, record_every, small
        ),
    )


def compiled_evaluate(loss, batched: bool):
    """The jitted :func:`evaluate` (vmapped over runs when ``batched``), compiled on demand."""

    def build():
        ref = owner_ref(loss)

        def run(carry, data):
            return evaluate(carry, data, loss=ref())

        return jax.jit(jax.vmap(run, in_axes=(0, None)) if batched else run)

    return cached(loss, ("evaluate", batched), build)


def _build(loss_ref, optimizer, batch_size, chunk_len, batched, record_every, small):
    def chunk(carry, data, tol, total_steps, chunk_steps, barrier_at):
        return _chunk(
            carry,
            data,
            tol,
            total_steps,
            chunk_steps,
            barrier_at,
            loss=loss_ref(),
            optimizer=optimizer,
            batch_size=batch_size,
            chunk_len=chunk_len,
            batched=batched,
            record_every=record_every,
        )

    return jax.jit(chunk, compiler_options=_compiler_options(optimizer, small))
