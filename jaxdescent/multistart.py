"""``multistart``: many random restarts of one run, as one vmapped compiled program.

Non-convex losses have many minima, and where gradient descent ends depends on where it
starts. ``multistart`` draws ``restarts`` initial points with ``init`` and runs the same
loop as :func:`jaxdescent.fit` on all of them at once with ``jax.vmap``, sharding the restart
axis over the devices when there are several.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from jaxdescent._checks import check_bool, check_callable, check_int, check_nonnegative
from jaxdescent._engine import core
from jaxdescent._engine.cache import Traced, cached, owner_ref
from jaxdescent._engine.checks import (
    as_key,
    aux_at,
    check_optimizer,
    check_problem,
    check_record_every,
    device_mesh,
    refuse_traced,
    scalar_loss,
    traced_error,
)
from jaxdescent._engine.driver import check_chunk, drive, warn_nonfinite
from jaxdescent.optim._common import host_state
from jaxdescent.optim.hyperparams import inject
from jaxdescent.results import Minima, MultistartResult

__all__ = ["Minima", "MultistartResult", "distinct_minima", "multistart", "restart_keys"]


def restart_keys(key: jax.Array, restarts: int) -> tuple[jax.Array, jax.Array]:
    """The ``(init_keys, fit_keys)`` that :func:`multistart` gives each restart."""
    restarts = check_int("restarts", restarts, minimum=1)
    return _split_keys(as_key(key), restarts)


@functools.partial(jax.jit, static_argnums=1)
def _split_keys(key, restarts):
    pairs = jax.vmap(jax.random.split)(jax.random.split(key, restarts))
    return pairs[:, 0], pairs[:, 1]


def multistart(
    init: Callable[[jax.Array], Any],
    loss: Callable,
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array,
    restarts: int,
    data: Any = None,
    steps: int,
    batch_size: int | None = None,
    tol: float | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    has_aux: bool = False,
    record_every: int | None = 1,
    trace: int | None = None,
    callback: Callable | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    shard: bool | None = None,
) -> MultistartResult:
    """Run :func:`jaxdescent.fit` from ``restarts`` random starts at once (``jax.vmap``).

    Args:
      init: ``init(key) -> params`` draws one starting point (e.g. ``model.init``).
      loss, optimizer, data, steps, batch_size, tol: as in ``fit``. With ``tol`` the
        program stops once every restart has converged or ended.
      has_aux, record_every, callback, chunk_size, progress: as in ``fit``.
      trace: as in ``fit``; the trace has a leading restart axis, then the recorded steps.
      key: PRNG key; restart ``i`` uses ``init_keys[i]`` for its start and ``fit_keys[i]``
        for its batch order (:func:`restart_keys`).
      restarts: number of restarts.
      hyperparams: per-restart hyperparameter values, e.g. ``{"learning_rate": lrs}`` with
        ``lrs.shape == (restarts,)``: a sweep in the same compiled program, no recompiling.
        Every jaxdescent rule keeps its numeric hyperparameters in its state and can be swept
        (``{"damping": ...}`` for ``newton``); an optax rule needs
        ``optax.inject_hyperparams``. Schedules cannot be swept (an error says so).
      shard: split the restart axis over all local devices (default: when there are several
        and they divide ``restarts``).

    Returns:
      A :class:`MultistartResult` with ``best_index`` and ``best_params``.
    """
    started = time.perf_counter()
    refuse_traced("multistart", data, key, hyperparams)
    check_callable("init", init)
    check_optimizer(optimizer)
    restarts = check_int("restarts", restarts, minimum=1)
    has_aux = check_bool("has_aux", has_aux)
    progress = check_bool("progress", progress)
    if shard is not None:
        shard = check_bool("shard", shard)
    if hyperparams is not None and not isinstance(hyperparams, Mapping):
        raise TypeError(
            "hyperparams must be a dict of per-restart values, e.g. {'learning_rate': lrs}; "
            f"got {type(hyperparams).__name__} {hyperparams!r:.80}"
        )
    every = check_record_every(record_every)
    trace = None if trace is None else check_int("trace", trace, minimum=1)
    if callback is not None:
        check_callable("callback", callback)
    value_loss = scalar_loss(loss) if has_aux else loss
    init_keys, fit_keys = restart_keys(key, restarts)
    try:
        draw, params_shape = _drawer(init, init_keys.dtype)
    except Traced:
        raise traced_error("multistart") from None
    # NumPy: the checks only trace with it, and ``init`` may build its state from it
    example = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params_shape)
    n = check_problem(value_loss, example, data, batch_size, steps, tol, name="init(key)")
    chunk = check_chunk(chunk_size, steps, progress, None, trace=trace, callback=callback)
    if hyperparams:  # checked on the state's shapes, before anything is compiled
        inject(jax.eval_shape(optimizer.init, example), hyperparams, restarts, optimizer=optimizer)
    ndev = jax.local_device_count()
    if shard is None:
        shard = ndev > 1 and restarts % ndev == 0
    if shard and restarts % ndev:
        raise ValueError(
            f"shard=True needs restarts ({restarts}) to be a multiple of the number of "
            f"devices ({ndev})"
        )

    params = draw(init_keys)
    opt_state = _stacked_state(optimizer, params, example, restarts)
    if hyperparams:
        opt_state = inject(opt_state, hyperparams, restarts, optimizer=optimizer)
    state = core.init_state(
        params, opt_state, fit_keys, core.Spec(batch_size, n, every, 0), runs=(restarts,)
    )
    if shard:
        mesh = device_mesh("restarts")
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("restarts"))
        state = jax.device_put(state, spec)
    state, (losses, norms), traced = drive(
        state,
        data,
        loss=value_loss,
        optimizer=optimizer,
        steps=steps,
        batch_size=batch_size,
        tol=tol,
        chunk=chunk,
        batched=True,
        progress=progress,
        record_every=every,
        trace=trace,
        callback=callback,
        caller="multistart",
    )
    aux = None
    if has_aux:
        aux = jax.vmap(lambda p: aux_at(loss, p, data))(state.params)
    warn_nonfinite(state, losses, norms, every)
    jax.block_until_ready(state.params)
    return MultistartResult(
        params=state.params,
        opt_state=state.opt_state,
        losses=losses,
        grad_norms=norms,
        steps_taken=state.updates,
        status=state.status,
        final_losses=state.loss,
        init_keys=init_keys,
        fit_keys=fit_keys,
        final_grad_norms=state.grad_norm,
        aux=aux,
        trace=traced,
        wall_time=time.perf_counter() - started,
    )


def _drawer(init, key_dtype):
    """``(draw, params_shape)``: one cached jitted program per ``init`` that draws every
    restart's params from its key, and the shapes of one restart's params (traced once)."""

    def build():
        try:
            shape = jax.eval_shape(init, jax.ShapeDtypeStruct((), key_dtype))
        except Exception as err:
            raise ValueError(
                f"calling init(key) failed while checking the problem: {err}"
            ) from err
        return jax.jit(jax.vmap(_deref(owner_ref(init)))), shape

    return cached(init, ("multistart-init", key_dtype), build)


def _deref(ref):
    def init(key):
        return ref()(key)

    return init


def _stacked_state(optimizer, params, example, restarts):
    """Every restart's optimizer state, built outside any compiled program, so that its
    hyperparameter values (a learning rate, say) never cause a recompile.

    A jaxdescent rule whose ``init`` reads only shapes (:func:`~jaxdescent.optim._common.
    shape_only`) builds one restart's state from ``example`` on the host and it is stacked
    there (NumPy, passed to the loop as it is); any other rule is ``vmap``-ed over the
    stacked ``params``.
    """
    if getattr(optimizer.init, "shape_only", False):
        with host_state():
            one = optimizer.init(example)
        leaves = jax.tree.leaves(one)
        if all(isinstance(x, np.ndarray) for x in leaves):
            return jax.tree.map(lambda x: np.broadcast_to(x, (restarts, *x.shape)), one)
    return jax.vmap(optimizer.init)(params)


def distinct_minima(params: Any, tol: float, losses: jax.Array | None = None) -> Minima:
    """Group stacked final points into distinct solutions.

    Two restarts belong to the same solution when their flattened parameters lie within
    Euclidean distance ``tol`` of that solution's first member (restarts are visited in order of
    ``losses`` when given, so each representative is its group's best). Restarts whose
    ``losses`` are not finite are labelled ``-1`` and ignored.

    Returns:
      :class:`Minima` with ``params`` (stacked representatives), ``labels`` (per restart) and
      ``counts`` (per solution).
    """
    check_nonnegative("tol", tol)
    leads = {
        "params" + jax.tree_util.keystr(path): np.shape(leaf)[:1]
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    if not leads or len(set(leads.values())) != 1 or () in leads.values():
        raise ValueError(
            "params must be stacked restarts: a pytree of arrays sharing a leading restart "
            f"axis; got leading sizes {leads}"
        )
    flat = np.asarray(jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(params))
    count = flat.shape[0]
    if losses is not None and np.shape(losses) != (count,):
        raise ValueError(
            f"losses must have shape ({count},), one value per restart; got {np.shape(losses)}"
        )
    order = np.arange(count) if losses is None else np.argsort(np.asarray(losses), kind="stable")
    valid = np.ones(count, bool) if losses is None else np.isfinite(np.asarray(losses))
    valid &= np.all(np.isfinite(flat), axis=1)
    labels = np.full(count, -1)
    reps: list[int] = []
    for i in order:
        if not valid[i]:
            continue
        for label, r in enumerate(reps):
            if np.linalg.norm(flat[i] - flat[r]) <= tol:
                labels[i] = label
                break
        else:
            labels[i] = len(reps)
            reps.append(int(i))
    counts = np.bincount(labels[labels >= 0], minlength=len(reps))
    chosen = np.asarray(reps, dtype=int)
    return Minima(jax.tree.map(lambda x: x[chosen], params), labels, counts)
