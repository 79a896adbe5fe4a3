"""Mini-batches drawn on device, inside jit.

A data set is a pytree of arrays sharing a leading axis of size ``n``. Each epoch visits the
examples in a fresh random order, a permutation drawn from ``fold_in(key, epoch)``, without
replacement: every example is seen once per epoch. An epoch has ``n // batch_size`` batches;
when ``batch_size`` does not divide ``n``, the ``n % batch_size`` examples that come last in
that epoch's order are left out of that epoch only (PyTorch's ``drop_last=True``). The
order changes every epoch, so no example is left out for good, and every step's batch has
the same shape (one compiled step).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdescent._checks import check_int

__all__ = ["batch_at", "batches_per_epoch", "check_data", "epoch_permutation", "num_examples"]


def num_examples(data: Any) -> int:
    """The shared leading size of every leaf of ``data``."""
    return int(jax.tree.leaves(data)[0].shape[0])


def check_data(data: Any) -> int:
    """Check ``data`` is a non-empty pytree of arrays with one shared leading size ``n > 0``.

    Non-finite values in floating-point leaves are reported, naming the leaf. Returns ``n``.
    """
    leaves = jax.tree_util.tree_leaves_with_path(data)
    if not leaves:
        raise ValueError(f"data must be a pytree of arrays; got {data!r} with no arrays")
    sizes = {}
    for path, leaf in leaves:
        where = "data" + jax.tree_util.keystr(path)
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(f"{where} must have a leading example axis; got a scalar of shape ()")
        sizes[where] = shape[0]
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            dtype = np.asarray(leaf).dtype
        if np.issubdtype(dtype, np.floating) and not isinstance(leaf, jax.core.Tracer):
            # an accelerator's arrays are checked where they are (only a bad leaf is copied
            # to the host); host arrays with NumPy, which compiles nothing per shape
            if _on_accelerator(leaf) and bool(jnp.all(jnp.isfinite(leaf))):
                continue
            finite = np.isfinite(np.asarray(leaf))
            if not finite.all():
                index = tuple(int(i) for i in np.argwhere(~finite)[0])
                raise ValueError(
                    f"{where} must be finite; got a non-finite value "
                    f"{np.asarray(leaf)[index]!r} at index {index}"
                )
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"data leaves must share their leading size (examples); got {listed}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("data must hold at least one example; got a leading size of 0")
    return int(n)


def _on_accelerator(leaf) -> bool:
    return isinstance(leaf, jax.Array) and any(d.platform != "cpu" for d in leaf.devices())


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch: ``n // batch_size`` (the remainder sits that epoch out)."""
    return n // batch_size


def epoch_permutation(key: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The order in which epoch number ``epoch`` visits the ``n`` examples."""
    # int32 whatever the x64 setting, so the order has one dtype inside the loop
    return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)


def batch_at(data: Any, key: jax.Array, step: jax.typing.ArrayLike, batch_size: int) -> Any:
    """The mini-batch that :func:`jaxdescent.fit` uses at step ``step`` (a pure function).

    Users writing their own loop around :func:`jaxdescent.make_step` call this to get
    exactly the batches ``fit`` would use with the same ``key``.
    """
    n = num_examples(data)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if batch_size > n:
        raise ValueError(
            f"batch_size must be at most the number of examples ({n}); got {batch_size}"
        )
    if not isinstance(step, jax.core.Tracer):
        if isinstance(step, bool) or not jnp.issubdtype(jnp.asarray(step).dtype, jnp.integer):
            raise TypeError(f"step must be an integer; got {step!r}")
        if int(step) < 0:
            raise ValueError(f"step must be >= 0; got {int(step)}")
    per_epoch = batches_per_epoch(n, batch_size)
    step = jnp.asarray(step)
    perm = epoch_permutation(key, step // per_epoch, n)
    return take_batch(data, perm, step % per_epoch, batch_size)


def take_batch(data: Any, perm: jax.Array, index: jax.Array, batch_size: int) -> Any:
    """Rows ``perm[index * batch_size : (index + 1) * batch_size]`` of every leaf."""
    rows = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
    return jax.tree.map(lambda leaf: jnp.take(leaf, rows, axis=0), data)
