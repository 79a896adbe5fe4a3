"""One cache for compiled programs, keyed by configuration rather than object identity.

Every compiled function jaxdescent keeps (the training loop, the multistart start-up, the
diagnostics) is stored here under three things:

- an *owner*, the user's callable the program was traced from (a loss, a model's ``init``),
  held by weak reference: when the user drops it, the entry and the program go, and with them
  any data the callable captured (a compiled program embeds captured arrays as constants).
  Callables that cannot be weakly referenced (or are unhashable, like an Equinox module with
  array fields) are keyed by identity in a small LRU that holds them strongly;
- a *fingerprint* of the configuration: the optimizer's ``update`` function compared by its
  code and the values it closes over, so an equal fresh ``optax.adam(3e-3)`` finds the program
  an earlier one compiled (and jaxdescent's own rules, whose numeric hyperparameters live in
  their state, give the same fingerprint whatever their values);
- static settings (batch size, chunk length, ...).

:func:`clear_cache` (``jd.clear_cache``) empties it.
"""

from __future__ import annotations

import collections
import enum
import functools
import threading
import types
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = ["cached", "clear_cache", "fingerprint", "owner_ref"]

T = TypeVar("T")

# programs per owner, and owners kept strongly (unweakrefable / unhashable)
_PER_OWNER = 32
_STRONG_OWNERS = 16
_SMALL_ARRAY = 64  # arrays up to this many elements are compared by value

_lock = threading.RLock()
_weak: dict[int, tuple[Any, collections.OrderedDict]] = {}
_strong: collections.OrderedDict[int, tuple[Any, collections.OrderedDict]] = (
    collections.OrderedDict()
)


class _Identity:
    """A key part compared by identity that keeps its object alive (ids are then unique)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def fingerprint(obj: Any) -> Hashable:
    """A hashable summary of ``obj`` equal for objects that compute the same thing.

    Functions compare by code object and by what they close over (recursively); partials,
    bound methods, tuples (NamedTuples included), lists and dicts by their parts; numbers,
    strings, dtypes and small arrays by value; anything else by ``==`` when hashable, else by
    identity. Two ``optax.adam(3e-3)`` objects thus have equal fingerprints, and
    ``optax.adam(1e-3)`` a different one.
    """
    return _fp(obj, {})


def _fp(obj: Any, active: dict[int, int]) -> Hashable:
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, (type, np.dtype, enum.Enum)):
        return obj
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        if isinstance(obj, jax.core.Tracer):
            return _Identity(obj)
        if np.size(obj) <= _SMALL_ARRAY and not jax.dtypes.issubdtype(
            obj.dtype, jax.dtypes.prng_key
        ):
            arr = np.asarray(obj)
            return ("array", arr.shape, arr.dtype.str, arr.tobytes())
        return _Identity(obj)
    if id(obj) in active:  # a cycle (a closure that refers to itself)
        return ("cycle", active[id(obj)])
    active[id(obj)] = len(active)
    try:
        if isinstance(obj, functools.partial):
            return (
                "partial",
                _fp(obj.func, active),
                _fp(obj.args, active),
                _fp(obj.keywords, active),
            )
        if isinstance(obj, types.FunctionType):
            cells = []
            for cell in obj.__closure__ or ():
                try:
                    cells.append(_fp(cell.cell_contents, active))
                except ValueError:  # an empty cell
                    cells.append(("empty",))
            return (
                "function",
                obj.__code__,
                _fp(obj.__defaults__, active),
                _fp(obj.__kwdefaults__, active),
                tuple(cells),
            )
        if isinstance(obj, types.MethodType):
            return ("method", _fp(obj.__func__, active), _fp(obj.__self__, active))
        if isinstance(obj, tuple):
            return (type(obj), tuple(_fp(x, active) for x in obj))
        if isinstance(obj, list):
            return ("list", tuple(_fp(x, active) for x in obj))
        if isinstance(obj, dict):
            return ("dict", tuple((_fp(k, active), _fp(v, active)) for k, v in obj.items()))
        try:
            hash(obj)
        except TypeError:
            return _Identity(obj)
        return (type(obj), obj)
    finally:
        del active[id(obj)]


def owner_ref(owner: Callable) -> Callable[[], Any]:
    """A zero-argument callable returning ``owner``, holding it weakly when it can.

    The compiled functions built for an owner close over this instead of the owner itself, so
    the cache entry (and nothing else) decides how long the owner's captured data live.
    """
    try:
        if isinstance(owner, types.MethodType):
            return weakref.WeakMethod(owner)
        return weakref.ref(owner)
    except TypeError:
        return lambda: owner


def _owner_slot(owner: Any) -> collections.OrderedDict:
    """The program table of ``owner`` (created on first use)."""
    target = owner.__self__ if isinstance(owner, types.MethodType) else owner
    oid = id(target)
    slot = _weak.get(oid)
    if slot is not None and slot[0]() is target:
        return slot[1]
    slot = _strong.get(oid)
    if slot is not None and slot[0] is target:
        _strong.move_to_end(oid)
        return slot[1]
    table: collections.OrderedDict = collections.OrderedDict()
    try:
        ref = weakref.ref(target, functools.partial(_forget, oid))
    except TypeError:
        _strong[oid] = (target, table)
        while len(_strong) > _STRONG_OWNERS:
            _strong.popitem(last=False)
        return table
    _weak[oid] = (ref, table)
    return table


def _forget(oid: int, ref: Any) -> None:
    with _lock:
        slot = _weak.get(oid)
        if slot is not None and slot[0] is ref:
            del _weak[oid]


def cached(owner: Callable, key: Hashable, build: Callable[[], T]) -> T:
    """``build()``, cached under ``(owner, key)``; ``owner`` is held weakly when possible.

    ``build`` must not capture ``owner`` strongly (use :func:`owner_ref`), or the entry would
    keep its owner alive. A bound method's entry lives as long as its ``__self__``, and the
    method's function is part of the key.
    """
    if isinstance(owner, types.MethodType):
        key = (fingerprint(owner.__func__), key)
    with _lock:
        table = _owner_slot(owner)
        value = table.get(key)
        if value is not None:
            table.move_to_end(key)
            return value
    value = build()
    with _lock:
        table = _owner_slot(owner)
        table[key] = value
        while len(table) > _PER_OWNER:
            table.popitem(last=False)
    return value


def clear_cache() -> None:
    """Drop every compiled program jaxdescent keeps (``jd.clear_cache()``).

    The next ``fit``, ``multistart`` or diagnostic compiles afresh. Programs are otherwise
    freed when the loss (or ``init``) they were compiled for is garbage collected; call this
    as well as ``jax.clear_caches()`` to free JAX's own caches.
    """
    with _lock:
        _weak.clear()
        _strong.clear()


def size() -> int:
    """Number of cached programs (for tests and diagnostics)."""
    with _lock:
        return sum(len(t) for _, t in _weak.values()) + sum(len(t) for _, t in _strong.values())
