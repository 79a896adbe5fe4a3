r"""One table per rule of its numeric hyperparameters, and the helpers that read them.

Every rule's numeric hyperparameters are listed once, in a :class:`Table`: for each, the
values it accepts (a test and the words an error message uses), whether it is an integer,
and whether it is a *runtime* value (kept in ``state.hyperparams``, read by ``update``, so a
sweep is a vmap and never a recompile) or a *static* one (fixed in the rule's closure: a
loop bound, a value only ``init`` reads). The same table drives

- the factory's checks (``jd.optim.adam(b1=1.5)``: ``b1 must be in [0, 1); got 1.5``), through
  :meth:`Table.check`;
- what ``optax.inject_hyperparams(rule)(...)`` accepts: it calls the factory, so the same
  checks run on its values (as arrays: concrete ones are checked, traced ones cannot be);
- the check of ``jd.multistart(hyperparams=...)``, through :func:`inject`: each value is
  checked against the table of the rule whose state holds it (found by the state's class,
  :func:`table_for`), so ``newton`` refuses ``eta=0.5`` in a sweep as ``newton(eta=0.5)`` does,
  while ``levenberg_marquardt``, whose ``eta`` may be up to 1, accepts it.

**Runtime values and their dtype.** ``state.hyperparams`` holds every runtime value the
factory was given, as a scalar array of :func:`hyperparam_dtype` (the widest real floating
dtype of the params, at least float32). Two kinds of value stay fixed in ``update`` instead:
a schedule ``count -> value`` (the learning rate), and values given as JAX arrays, which is
how ``optax.inject_hyperparams`` passes its current values on every update (they may also be
tracers of an outer transformation). Those arrays are used as given, and *also* written to
``state.hyperparams``, so the state has the same structure and values however the rule was
built: the inner state of ``optax.inject_hyperparams(rule)(...)`` equals that of
``rule(...)``, and the state always shows the values in use. A sweep sets the outer
(injected) values and this copy together.

**Holders and addresses.** :func:`find_hyperparams` walks a state (tuples, NamedTuples,
lists, dicts and any other pytree: ``optax.chain``, ``optax.multi_transform``,
``optax.partition``, ``optax.masked``, ``optax.inject_hyperparams``) for the states holding a
``hyperparams`` dict. A swept name is found in the one holder that has it. Where several do
(two rules of a chain or of a ``multi_transform`` with a learning rate each), the name must
be qualified by parts of its holder's path, separated by ``/``, that only that holder's path
contains, in order: ``"w/learning_rate"`` for the rule under the label ``"w"`` of a
``multi_transform``, ``"1/learning_rate"`` for the second rule of a chain. A path is made
of the field names, dict keys and sequence indices from the state's root to the holder; an
ambiguous name is an error that lists the holders' paths.

Adopting a table in a rule (as :mod:`jaxdescent.optim.first_order` does)::

    hp = ADAM.check(learning_rate=learning_rate, b1=b1, ...)  # errors before any tracing
    fixed = hp.fixed                                          # (and the static values used)
    init:    State(..., hyperparams=hp.init(params))
    update:  values = fixed.values(state.hyperparams, state.count)   # to compute with
             State(..., hyperparams=fixed.carry(state.hyperparams))  # the new state
    return optax.GradientTransformationExtraArgs(init, fixed.mark(update))

``update`` must close over ``hp.fixed`` and the static values it reads only (never ``hp``
itself, which holds the runtime numbers): then two builds that differ only in runtime values
have equal ``update`` functions for the engine's compile cache. ``fixed.mark`` lets
:func:`inject` refuse to sweep a value given as an array (which ``update`` would ignore).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdescent._checks import check_int
from jaxdescent.optim._common import _host_array

__all__ = [
    "ADAGRAD",
    "ADAM",
    "ADAMW",
    "BACKTRACKING_LINE_SEARCH",
    "GAUSS_NEWTON",
    "LEVENBERG_MARQUARDT",
    "MOMENTUM",
    "NEWTON",
    "NEWTON_CG",
    "RMSPROP",
    "SADDLE_FREE_NEWTON",
    "SGD",
    "Checked",
    "Fixed",
    "Holder",
    "Hyperparam",
    "Table",
    "check_sweep",
    "find_hyperparams",
    "hyperparam_dtype",
    "inject",
    "refresh_hyperparams",
    "state_value",
    "table_for",
]


# --- one hyperparameter, one rule's table ------------------------------------------------------


class Hyperparam(NamedTuple):
    """One numeric hyperparameter of a rule.

    ``test`` maps a float64 array of values to a boolean array (the values accepted; a real
    value must also be finite), and ``expected`` says it in words for error messages
    (``"in [0, 1)"``). ``integer``: only integers. ``runtime``: kept in ``state.hyperparams``
    (else static: fixed in the rule's closure, or only read by ``init``). ``optional``:
    ``None`` is accepted (the option is off). ``schedule``: a callable ``count -> value`` is
    accepted, fixed in the closure.
    """

    name: str
    test: Callable[[np.ndarray], np.ndarray]
    expected: str
    integer: bool = False
    runtime: bool = True
    optional: bool = False
    schedule: bool = False


class Table(NamedTuple):
    """A rule's numeric hyperparameters, and the qualified names
    (``"module.ClassName"``) of the state classes that hold its runtime values."""

    rule: str
    entries: tuple[Hyperparam, ...]
    states: tuple[str, ...] = ()

    def get(self, name: str) -> Hyperparam | None:
        """The entry called ``name``, or ``None``."""
        return next((e for e in self.entries if e.name == name), None)

    @property
    def runtime_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries if e.runtime)

    def check(self, **values: Any) -> Checked:
        """Check a factory's arguments (one value for each entry of the table) and sort them.

        Raises:
          TypeError: a value of the wrong kind (a string, a bool, an array that is not a
            scalar, a float for an integer, a traced integer), naming the argument.
          ValueError: a value out of range or not finite: the message names the argument,
            the range and the value.
        """
        missing = [e.name for e in self.entries if e.name not in values]
        unknown = [name for name in values if self.get(name) is None]
        if missing or unknown:  # a mistake in the rule's code, not the user's
            raise KeyError(f"{self.rule}'s table: missing {missing}, unknown {unknown}")
        runtime, pinned, schedules, static = {}, {}, {}, {}
        for entry in self.entries:
            value = _check_argument(entry, values[entry.name])
            if not entry.runtime:
                static[entry.name] = value
            elif value is None:
                continue
            elif callable(value):
                schedules[entry.name] = value
            elif isinstance(value, jax.Array):
                pinned[entry.name] = value
            else:
                runtime[entry.name] = value
        return Checked(runtime, Fixed(pinned, schedules), static)


class Fixed(NamedTuple):
    """What a rule's ``update`` closes over: the values fixed at construction (JAX arrays,
    used as given) and the schedules. Equal for builds that differ in runtime values only."""

    pinned: dict[str, Any]
    schedules: dict[str, Callable]

    def values(self, state_hyperparams: Mapping[str, jax.Array], count: jax.Array) -> dict:
        """The values for the update numbered ``count``: the state's, the fixed ones as
        given, and each scheduled value at ``count``."""
        hp = dict(state_hyperparams)
        hp.update({name: _real(value) for name, value in self.pinned.items()})
        for name, schedule in self.schedules.items():
            hp[name] = jnp.asarray(schedule(count))
        return hp

    def carry(self, state_hyperparams: Mapping[str, jax.Array]) -> dict:
        """``state.hyperparams`` for the new state: the same, with the fixed values written
        in (in the state's dtypes), so the state shows the values in use."""
        if not self.pinned:
            return state_hyperparams
        hp = dict(state_hyperparams)
        for name, value in self.pinned.items():
            hp[name] = jnp.asarray(_real(value), jnp.result_type(state_hyperparams[name]))
        return hp

    def mark(self, update: Callable) -> Callable:
        """``update``, marked with the names of its fixed values (``update.fixed_hyperparams``):
        :func:`inject` refuses to sweep them, since ``update`` would ignore the swept values."""
        update.fixed_hyperparams = frozenset(self.pinned)
        return update


class Checked(NamedTuple):
    """A factory's checked arguments: the runtime numbers (``init`` puts them in the state),
    what ``update`` may close over (:class:`Fixed`) and the static options (integers as
    ``int``)."""

    runtime: dict[str, Any]
    fixed: Fixed
    static: dict[str, Any]

    def init(self, params: Any) -> dict[str, jax.Array]:
        """``state.hyperparams`` at ``init``: every runtime value and every fixed array, as a
        scalar array of :func:`hyperparam_dtype` (on the host inside
        :func:`~jaxdescent.optim._common.host_state`)."""
        return initial_hyperparams({**self.runtime, **self.fixed.pinned}, params)


def initial_hyperparams(runtime: Mapping[str, Any], params: Any) -> dict[str, jax.Array]:
    """``state.hyperparams`` at ``init`` for checked runtime values: each as a scalar array of
    :func:`hyperparam_dtype` (the second-order rules, whose forms fill their own defaults,
    call it directly)."""
    dtype = hyperparam_dtype(params)
    return {name: state_value(value, dtype) for name, value in runtime.items()}


def _real(value: Any) -> Any:
    """The real part of a complex value (``optax.inject_hyperparams`` casts hyperparameters
    to complex for complex params); anything else as it is."""
    if jnp.iscomplexobj(value):
        return jnp.real(value)
    return value


# --- the dtype of runtime values ---------------------------------------------------------------


def hyperparam_dtype(params: Any) -> jnp.dtype:
    """The dtype runtime hyperparameters are kept in, for every rule: the widest real
    floating dtype among the params' leaves (a complex leaf counts as its real part), at
    least float32. float32 params keep float32 values under x64 too; bfloat16 ones get
    float32 (in bfloat16, ``b2 = 0.999`` would round to 1 and Adam's second moment vanish).
    Each use casts the value to the dtype it meets."""
    reals = []
    for leaf in jax.tree.leaves(params):
        dtype = _dtype_of(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            dtype = np.finfo(dtype).dtype
        if jnp.issubdtype(dtype, jnp.floating):
            reals.append(dtype)
    widest = jax.dtypes.canonicalize_dtype(jnp.result_type(*reals) if reals else float)
    return jnp.promote_types(widest, jnp.float32)


def _dtype_of(x) -> np.dtype:
    dtype = getattr(x, "dtype", None)  # arrays: read it (jnp.result_type costs ~10 us each)
    if isinstance(dtype, np.dtype) and not getattr(x, "weak_type", False):
        return dtype
    return jnp.result_type(x)


def state_value(value: Any, dtype: Any) -> jax.Array:
    """``value`` as a scalar array of ``dtype`` for ``state.hyperparams`` (its real part when
    complex). Concrete values are converted on the host: no compile, and a NumPy array
    inside :func:`~jaxdescent.optim._common.host_state`."""
    if isinstance(value, jax.core.Tracer):
        return jnp.asarray(_real(value), dtype)
    array = np.asarray(value)
    if np.iscomplexobj(array):
        array = array.real
    return _host_array(np.asarray(array, dtype))


# --- checks -------------------------------------------------------------------------------------


def _check_argument(entry: Hyperparam, value: Any) -> Any:
    """A factory argument checked against its entry; integers come back as ``int``, other
    values as given (numbers stay numbers, arrays arrays)."""
    name = entry.name
    if value is None and entry.optional:
        return None
    if entry.schedule and callable(value):
        return value  # not evaluated here (it may need tracing)
    if entry.integer:
        number = check_int(name, value)
        if not bool(entry.test(np.float64(number))):
            raise ValueError(f"{name} must be {entry.expected}; got {value!r}")
        return number
    if isinstance(value, jax.core.Tracer):
        # complex too: optax.inject_hyperparams casts values to complex for complex params
        if not (_real_dtype(value.dtype) or jnp.issubdtype(value.dtype, jnp.complexfloating)):
            raise TypeError(f"{name} must be a real scalar; got a traced {value.dtype} value")
        return value
    number = _concrete_real(value)
    if number is None:
        kind = "a real scalar" + (" or a schedule" if entry.schedule else "")
        kind += " or None" if entry.optional else ""
        raise TypeError(f"{name} must be {kind}; got {value!r} ({type(value).__name__})")
    if not (np.isfinite(number) and bool(entry.test(np.float64(number)))):
        raise ValueError(f"{name} must be {entry.expected}; got {value!r}")
    return value


def _real_dtype(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))


def _concrete_real(value: Any) -> float | None:
    """A real scalar's value; a complex array with no imaginary part (as
    ``optax.inject_hyperparams`` makes for complex params) counts as real. ``None`` for
    anything else."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0:
        array = np.asarray(value)
        if np.iscomplexobj(array) and array.imag == 0:
            array = array.real
        if _real_dtype(array.dtype):
            return float(array)
    return None


def check_sweep(table: Table | None, name: str, value: Any, *, where: str | None = None) -> None:
    """Check values for the hyperparameter ``name`` as a sweep gives them (a number or an
    array of them, one per restart), against ``table`` (``None``: a rule without one, whose
    values need only be real and finite). Tracers cannot be inspected and pass.

    Raises:
      TypeError: not real (a string, a bool, a complex number, None), or not integers for
        an integer hyperparameter.
      ValueError: a value not finite or out of range; the message names ``where`` (by
        default ``hyperparams[name]``), the range and the offending value (and its index).
    """
    where = where or f"hyperparams[{name!r}]"
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, (bool, np.bool_)) or not (
        isinstance(value, numbers.Real)
        or (isinstance(value, (np.ndarray, np.generic, jax.Array)) and _real_dtype(value.dtype))
    ):
        raise TypeError(
            f"{where} must be a real number or an array of real numbers; got {value!r} "
            f"({type(value).__name__})"
        )
    entry = table.get(name) if table is not None else None
    array = np.asarray(value, dtype=np.float64)
    if entry is None:
        test, expected = (lambda v: np.ones_like(v, bool)), "finite"
    else:
        test, expected = entry.test, entry.expected
    good = np.isfinite(array) & test(array)
    if entry is not None and entry.integer:
        good &= array == np.round(array)
        expected = f"an integer {expected}"
    if np.all(good):
        return
    if array.ndim == 0:
        raise ValueError(f"{where} must be {expected}; got {value!r}")
    index = tuple(int(i) for i in np.argwhere(~good)[0])
    raise ValueError(
        f"{where} must be {expected} for every entry; got {array[index].item()!r} at index "
        f"{index if len(index) > 1 else index[0]} (of {math.prod(array.shape)} values)"
    )


# --- the tables ---------------------------------------------------------------------------------


def _nonnegative(name: str, **kw: Any) -> Hyperparam:
    return Hyperparam(name, lambda v: v >= 0, ">= 0 and finite", **kw)


def _positive(name: str, **kw: Any) -> Hyperparam:
    return Hyperparam(name, lambda v: v > 0, "> 0 and finite", **kw)


def _unit(name: str, **kw: Any) -> Hyperparam:
    return Hyperparam(name, lambda v: (v >= 0) & (v < 1), "in [0, 1)", **kw)


def _open_unit(name: str, **kw: Any) -> Hyperparam:
    return Hyperparam(name, lambda v: (v > 0) & (v < 1), "in (0, 1)", **kw)


def _count(name: str, minimum: int = 1, **kw: Any) -> Hyperparam:
    """A static integer such as a loop bound."""
    return Hyperparam(
        name, lambda v: v >= minimum, f">= {minimum}", integer=True, runtime=False, **kw
    )


_LEARNING_RATE = _nonnegative("learning_rate", schedule=True)
_FIRST = "jaxdescent.optim.first_order."
_SECOND = "jaxdescent.optim.second_order."
_LSQ = "jaxdescent.optim.least_squares."
_SHRINK, _C1 = _open_unit("shrink"), _open_unit("c1")

SGD = Table("sgd", (_LEARNING_RATE,), (_FIRST + "SgdState",))
MOMENTUM = Table("momentum", (_LEARNING_RATE, _unit("beta")), (_FIRST + "MomentumState",))
ADAGRAD = Table(
    "adagrad",
    (_LEARNING_RATE, _nonnegative("initial_accumulator_value", runtime=False), _positive("eps")),
    (_FIRST + "AdagradState",),
)
RMSPROP = Table(
    "rmsprop",
    (
        _LEARNING_RATE,
        _unit("decay"),
        _positive("eps"),
        _unit("momentum", optional=True),
        _nonnegative("initial_scale", runtime=False),
    ),
    (_FIRST + "RmspropState",),
)
_ADAM_ENTRIES = (
    _LEARNING_RATE,
    _unit("b1"),
    _unit("b2"),
    _positive("eps"),
    _nonnegative("eps_root"),
)
# AdamState is held by adam and adamw: the sweep reads adamw's table, whose entries are
# adam's (the same ranges) and weight_decay
ADAM = Table("adam", _ADAM_ENTRIES)
ADAMW = Table("adamw", (*_ADAM_ENTRIES, _nonnegative("weight_decay")), (_FIRST + "AdamState",))
BACKTRACKING_LINE_SEARCH = Table(
    "backtracking_line_search",
    (_positive("initial_step"), _SHRINK, _C1, _count("max_steps")),
    ("jaxdescent.optim.line_search.BacktrackingLineSearchState",),
)

# the second-order rules, as their factories check them (a factory checks every value given
# by its table first, then refuses the values its form or solver does not read); ``None``
# takes the form's default
_QUARTER = "in [0, 0.25)"
_CG_TOL = "in (0, 1]"


def _eta(**kw: Any) -> Hyperparam:
    return Hyperparam("eta", lambda v: (v >= 0) & (v < 0.25), _QUARTER, **kw)


def _cg_tol(**kw: Any) -> Hyperparam:
    return Hyperparam("cg_tol", lambda v: (v > 0) & (v <= 1), _CG_TOL, **kw)


_SEARCH_OR_NONE = (
    _open_unit("shrink", optional=True),
    _open_unit("c1", optional=True),
    _count("max_line_search_steps", optional=True),
)
NEWTON = Table(
    "newton",
    (
        _nonnegative("damping", optional=True),
        _positive("initial_radius", optional=True),
        _positive("max_radius", optional=True),
        _eta(optional=True),
        Hyperparam("damping_factor", lambda v: v > 1, "> 1 and finite", optional=True),
        _count("max_damping_steps", optional=True),
        *_SEARCH_OR_NONE,
    ),
    (_SECOND + "NewtonState",),
)
SADDLE_FREE_NEWTON = Table(
    "saddle_free_newton",
    (_positive("damping"), _SHRINK, _C1, _count("max_line_search_steps")),
    (_SECOND + "SaddleFreeNewtonState",),
)
NEWTON_CG = Table(
    "newton_cg",
    (
        _count("max_cg_steps"),
        _cg_tol(),
        _nonnegative("damping"),
        _SHRINK,
        _C1,
        _count("max_line_search_steps"),
    ),
    (_SECOND + "NewtonCGState",),
)
GAUSS_NEWTON = Table(
    "gauss_newton",
    (
        _nonnegative("damping"),
        _count("max_cg_steps", optional=True),
        _cg_tol(optional=True),
        *_SEARCH_OR_NONE,
    ),
    (_LSQ + "GaussNewtonState",),
)
LEVENBERG_MARQUARDT = Table(
    "levenberg_marquardt",
    (
        _positive("initial_damping"),
        _positive("initial_radius"),
        _eta(),
        _count("max_cg_steps", optional=True),
        _cg_tol(optional=True),
    ),
    (_LSQ + "LevenbergMarquardtState",),
)

TABLES = (
    SGD,
    MOMENTUM,
    ADAGRAD,
    RMSPROP,
    ADAM,
    ADAMW,
    BACKTRACKING_LINE_SEARCH,
    NEWTON,
    SADDLE_FREE_NEWTON,
    NEWTON_CG,
    GAUSS_NEWTON,
    LEVENBERG_MARQUARDT,
)
_BY_STATE = {state: table for table in TABLES for state in table.states}


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def table_for(state: Any) -> Table | None:
    """The table of the rule whose state ``state`` is (by its class), or ``None``."""
    return _BY_STATE.get(_qualified_name(type(state)))


# --- finding the states that hold hyperparameters ----------------------------------------------

_NOT_WALKED = ("hyperparams", "hyperparams_states")  # inside a holder: values, not states


class Holder(NamedTuple):
    """A state holding a ``hyperparams`` dict, found by :func:`find_hyperparams`.

    ``path``: the field names, dict keys and sequence indices from the root to it.
    ``table``: its rule's table (for ``optax.inject_hyperparams`` of a jaxdescent rule, that
    rule's), or ``None``. ``mirrored``: the names whose values are copies of those of the
    ``optax.inject_hyperparams`` state around it (set through that one).
    """

    path: tuple[Any, ...]
    state: Any
    table: Table | None
    mirrored: frozenset[str]

    @property
    def address(self) -> str:
        return "/".join(str(key) for key in self.path) or "(the root)"

    def names(self) -> list[str]:
        """The names a sweep can set here (the mirrored ones are set through the holder
        around it)."""
        return [name for name in self.state.hyperparams if name not in self.mirrored]


def _is_holder(node: Any) -> bool:
    return isinstance(getattr(node, "hyperparams", None), dict)


def _key(entry: Any) -> Any:
    for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey/FlattenedIndexKey, SequenceKey
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _map_holders(state: Any, fn: Callable, path: tuple = ()) -> Any:
    """``state`` with every holder ``h`` (at any depth, holders inside holders included)
    replaced by ``fn(path, h)``; inner holders are mapped first."""

    def visit(keypath, node):
        if not _is_holder(node):
            return node
        here = (*path, *(_key(k) for k in keypath))
        fields = getattr(node, "_fields", ())
        inner = {
            f: _map_holders(getattr(node, f), fn, (*here, f))
            for f in fields
            if f not in _NOT_WALKED
        }
        if inner:
            node = node._replace(**inner)
        return fn(here, node)

    return jax.tree_util.tree_map_with_path(visit, state, is_leaf=_is_holder)


def find_hyperparams(state: Any) -> list[Holder]:
    """Every state inside ``state`` (``state`` itself included) that holds a
    ``hyperparams`` dict: jaxdescent's rules and ``optax.inject_hyperparams``, at any depth
    of chains, ``multi_transform``/``partition``, ``masked`` and ``inject_hyperparams``
    states. Ordered by path."""
    found: dict[tuple, Any] = {}

    def collect(path, node):
        found[path] = node
        return node

    _map_holders(state, collect)
    holders = []
    for path, node in sorted(found.items(), key=lambda item: [str(k) for k in item[0]]):
        outer = found.get(path[:-1]) if path and path[-1] == "inner_state" else None
        mirrored = frozenset(node.hyperparams) & frozenset(outer.hyperparams) if outer else ()
        table = table_for(node)
        if table is None and hasattr(node, "inner_state"):
            table = table_for(node.inner_state)  # inject_hyperparams of a jaxdescent rule
        holders.append(Holder(path, node, table, frozenset(mirrored)))
    return holders


# --- sweeps --------------------------------------------------------------------------------------


def _subsequence(parts: list[str], path: tuple) -> bool:
    keys = iter(str(k) for k in path)
    return all(any(part == key for key in keys) for part in parts)


def _suggest(holder: Holder, others: list[Holder], name: str) -> str:
    """The shortest address of ``name`` in ``holder`` that no other holder matches."""
    for key in holder.path:
        if not any(_subsequence([str(key)], other.path) for other in others):
            return f"{key}/{name}"
    return f"{holder.address}/{name}"


def _target(holders: list[Holder], key: str) -> Holder:
    """The holder the swept ``key`` (``name`` or ``"part/.../name"``) addresses."""
    *parts, name = key.split("/")
    having = [h for h in holders if name in h.names()]
    if not having:
        _not_held(holders, key, name)
    chosen = [h for h in having if _subsequence(parts, h.path)]
    if not chosen:
        raise ValueError(
            f"hyperparams[{key!r}]: no part of this optimizer under {'/'.join(parts)!r} holds "
            f"{name!r}; it is held at {[h.address for h in having]}"
        )
    if len(chosen) > 1:
        example = _suggest(chosen[0], chosen[1:], name)
        raise ValueError(
            f"hyperparams[{key!r}] is ambiguous: {len(chosen)} parts of this optimizer hold "
            f"{name!r}, at {[h.address for h in chosen]}; address one by a part of its path "
            f"(keys, fields or indices joined by '/'), e.g. {example!r}"
        )
    held = chosen[0]
    if name in (getattr(held.state, "hyperparams_states", None) or {}):
        raise ValueError(
            f"hyperparams[{key!r}] is a schedule in this optimizer: optax recomputes it "
            "from the step count at every update, so per-restart values would be ignored. "
            "Sweep a constant, or a schedule's own parameters by building one optimizer per "
            "value"
        )
    entry = held.table.get(name) if held.table is not None else None
    if entry is not None and not entry.runtime:
        _static(key, held.table)
    return held


def _static(key: str, table: Table):
    name = key.split("/")[-1]
    raise ValueError(
        f"hyperparams[{key!r}] is a static option of {table.rule}: it fixes the compiled "
        f"program (a loop bound, or a value only init reads), so it cannot be swept; build "
        f"one optimizer per value of {name}"
    )


def _not_held(holders: list[Holder], key: str, name: str):
    for holder in holders:
        entry = holder.table.get(name) if holder.table is not None else None
        if entry is not None and not entry.runtime:
            _static(key, holder.table)
        if entry is not None:
            raise ValueError(
                f"hyperparams[{key!r}] is not a runtime hyperparameter of this "
                f"{holder.table.rule}: it has {sorted(holder.names())}. A value its form or "
                "solver does not read, a schedule, or an option left unset (None) cannot be "
                f"swept; build the rule with a number for {name} (in a form that reads it)"
            )
    available = sorted({n for h in holders for n in h.names()})
    raise ValueError(
        f"hyperparams[{key!r}] is not a runtime hyperparameter of this optimizer; it has "
        f"{available} (a schedule, or an argument fixed at construction, cannot be swept)"
    )


def _as_dtype(values: Any, like: Any) -> Any:
    dtype = jnp.result_type(like)
    if isinstance(values, jax.core.Tracer):
        return jnp.asarray(values, dtype)
    return np.asarray(values, dtype)


def inject(
    opt_state: Any,
    hyperparams: Mapping[str, Any],
    restarts: int,
    *,
    optimizer: Any = None,
) -> Any:
    """``opt_state`` (stacked over restarts) with runtime hyperparameters replaced by one
    value per restart, as ``jd.multistart(hyperparams=...)`` asks.

    Each key is a hyperparameter's name, or a name qualified by parts of its holder's path
    (``"w/learning_rate"``; see the module's docstring). Each value is checked against the
    table of the rule holding it, must have shape ``(restarts,)``, and is stored in the
    holder's dtype; the copy a jaxdescent rule inside ``optax.inject_hyperparams`` keeps is
    set too. Works on the state's shapes (``jax.eval_shape``) as on its arrays.

    ``optimizer``, when given, is the transformation ``opt_state`` belongs to: a jaxdescent
    rule built with a JAX array for a value (``adam(jnp.asarray(0.1))``) keeps that value
    fixed in its ``update``, and sweeping it is refused. (Within a chain that mark cannot be
    read: there such a value is swept in the state and ignored by ``update``.)

    Raises:
      ValueError: no holder at all; a name no holder has, a static option, a fixed value
        or a schedule; an ambiguous name; a name given twice; a value out of its rule's
        range; a wrong shape.
      TypeError: a value that is not real.

    Example:
      Two rules of a ``multi_transform`` have a learning rate: address one by its label.

      >>> import jax, jax.numpy as jnp, numpy as np, optax, jaxdescent as jd
      >>> from jaxdescent.optim.hyperparams import find_hyperparams, inject
      >>> opt = optax.multi_transform({"w": jd.optim.adam(0.1), "b": jd.optim.sgd(0.1)},
      ...                             {"w": "w", "b": "b"})
      >>> state = opt.init({"w": jnp.ones(3), "b": jnp.zeros(())})
      >>> [h.address for h in find_hyperparams(state)]
      ['inner_states/b/inner_state', 'inner_states/w/inner_state']
      >>> stacked = jax.tree.map(lambda x: np.stack([x, x]), state)   # two restarts
      >>> new = inject(stacked, {"w/learning_rate": np.array([0.01, 0.02])}, restarts=2)
      >>> new.inner_states["w"].inner_state.hyperparams["learning_rate"]
      array([0.01, 0.02], dtype=float32)
    """
    holders = find_hyperparams(opt_state)
    if not holders:
        raise ValueError(
            "hyperparams needs an optimizer whose state holds its hyperparameters: "
            "jaxdescent's rules do (jd.optim.adam(1e-3), jd.optim.newton(), ...), and any "
            "optax rule wrapped as optax.inject_hyperparams(optax.adam)(learning_rate=1e-3); "
            f"this optimizer's state ({type(opt_state).__name__}) has none"
        )
    fixed = getattr(getattr(optimizer, "update", None), "fixed_hyperparams", frozenset())
    writes: dict[tuple, dict[str, Any]] = {}
    given: dict[tuple, str] = {}
    for key, values in hyperparams.items():
        if not isinstance(key, str):
            raise TypeError(f"hyperparams keys must be names (str); got {key!r}")
        held = _target(holders, key)
        name = key.split("/")[-1]
        if held.path == () and name in fixed:
            raise ValueError(
                f"hyperparams[{key!r}] was given to this rule as a JAX array, which stays "
                "fixed in its update (as optax.inject_hyperparams needs), so per-restart "
                f"values would be ignored; build the rule with a number for {name} (e.g. "
                "float(x)) to sweep it"
            )
        if (held.path, name) in given:
            raise ValueError(
                f"hyperparams[{key!r}] and hyperparams[{given[held.path, name]!r}] both set "
                f"{name!r} at {held.address}"
            )
        given[held.path, name] = key
        check_sweep(held.table, name, values, where=f"hyperparams[{key!r}]")
        shape = np.shape(values)
        if shape != (restarts,):
            raise ValueError(
                f"hyperparams[{key!r}] must have shape ({restarts},), one value per restart; "
                f"got {shape}"
            )
        writes.setdefault(held.path, {})[name] = values
        mirror = next((h for h in holders if h.path == (*held.path, "inner_state")), None)
        if mirror is not None and name in mirror.mirrored:
            writes.setdefault(mirror.path, {})[name] = values

    def write(path, node):
        if path not in writes:
            return node
        new = dict(node.hyperparams)
        for name, values in writes[path].items():
            new[name] = _as_dtype(values, new[name])
        return node._replace(hyperparams=new)

    return _map_holders(opt_state, write)


def refresh_hyperparams(saved_state: Any, fresh_state: Any) -> Any:
    """``saved_state`` with the hyperparameter values of every holder taken from
    ``fresh_state``: resuming a run from a checkpoint with a new optimizer (``sgd(0.2)``
    where the checkpoint was saved with ``sgd(0.001)``) then uses the new values, as optax's
    rules do (their values live in the closure). Everything else (moments, counters, the
    schedules' states) stays as saved. Each value is cast to the saved one's dtype and
    broadcast to its shape (a value per restart when the saved state was stacked), so the
    state's types do not change; concrete values come back as NumPy arrays.

    Raises:
      ValueError: the two states differ in structure (another rule, other options, a
        schedule for a constant, other params).
    """
    saved_def, fresh_def = jax.tree.structure(saved_state), jax.tree.structure(fresh_state)
    if saved_def != fresh_def:
        raise ValueError(
            "fresh_state must have the structure of saved_state (the same rules, options "
            "and params; a schedule where a number was, or the reverse, changes it); got "
            f"{_short(fresh_def)} for a saved {_short(saved_def)}"
        )
    fresh = {h.path: h.state.hyperparams for h in find_hyperparams(fresh_state)}

    def take(path, node):
        new = dict(node.hyperparams)
        for name, value in fresh[path].items():
            old = new[name]
            if isinstance(value, jax.core.Tracer) or isinstance(old, jax.core.Tracer):
                new[name] = jnp.broadcast_to(jnp.asarray(value, old.dtype), jnp.shape(old))
            else:
                new[name] = np.broadcast_to(np.asarray(value, old.dtype), np.shape(old)).copy()
        return node._replace(hyperparams=new)

    return _map_holders(saved_state, take)


def _short(treedef: Any, limit: int = 300) -> str:
    text = str(treedef)
    return text if len(text) <= limit else text[: limit - 3] + "..."
