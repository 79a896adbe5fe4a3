"""One cache of compiled programs, keyed by what a program read while it was traced.

A program (the training loop of a loss and an optimizer, a diagnostic, ...) is reused only
when nothing it read while tracing can differ. Its key is a *token* of every object it was
built from (:func:`token`):

- numbers, strings, small arrays (at most ``SMALL_ARRAY`` elements), tuples, lists and dicts
  by value;
- a function by its code, defaults, the values it closes over and, for functions written
  outside installed libraries (a script, a notebook, a test), the current values of the
  globals its code reads, and of the attributes it reads off a module of the user's
  (``config.LR``): a notebook cell that sets ``LR = 0.1`` again, or redefines a helper, gets
  a new program;
- a bound method by its function and its object; any other object (a callable class, an
  Equinox module, a schedule object) by its type and a snapshot of its attributes, so
  ``p.target = 5.0`` before the next fit of ``p.loss`` is seen;
- a JAX array of more than ``SMALL_ARRAY`` elements by identity (it is immutable) and a NumPy
  one by identity and a digest of its bytes (changed in place, it gets a new key);
- anything else (modules, classes, opaque objects, values nested deeper than ``MAX_DEPTH``)
  by identity, as ``jax.jit`` keys a function.

jaxdescent's own rules keep their numeric hyperparameters in their state, so their
``update`` functions have equal tokens whatever the values: a sweep never recompiles, and an
equal fresh ``optax.adam(3e-3)`` finds the program an earlier one compiled.

An entry keeps no user object alive. Objects keyed by identity that can be weakly
referenced are watched: when one is garbage collected, the entries that name it go, and
with them the compiled programs and the constants they embed. A program reads the user's
callables of the current call (:class:`Program`), so it never holds an earlier call's
objects either. At most ``MAX_ENTRIES`` programs are kept (least recently used first out);
:func:`clear_cache` (``jd.clear_cache``) drops them all.
"""

from __future__ import annotations

import builtins
import collections
import dis
import enum
import functools
import hashlib
import os
import struct
import sys
import sysconfig
import threading
import types
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

__all__ = ["Program", "Traced", "cached", "clear_cache", "memo", "owner_ref", "token"]

SMALL_ARRAY = 64  # arrays of at most this many elements are keyed by value
MAX_DEPTH = 12  # objects nested deeper are keyed by identity
MAX_ITEMS = 10_000  # longer containers are keyed by identity
MAX_ENTRIES = 256

_lock = threading.RLock()
_entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()


class Traced(Exception):
    """A JAX tracer was met while making a token: the object closes over a traced value
    (it is being used inside ``jax.jit``, ``jax.vmap`` or ``jax.grad``)."""


class _Identity:
    """A key part compared by identity. It holds its object weakly where it can (the entry
    is then dropped when the object dies, :class:`_Entry`), strongly otherwise."""

    __slots__ = ("oid", "ref", "strong")

    def __init__(self, obj: Any, watch: list):
        self.oid = id(obj)
        self.strong = None
        try:
            self.ref = weakref.ref(obj)
            watch.append(self.ref)
        except TypeError:
            self.ref = None
            self.strong = obj

    def _get(self):
        return self.strong if self.ref is None else self.ref()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Identity) or other.oid != self.oid:
            return False
        mine = self._get()
        return mine is not None and mine is other._get()

    def __hash__(self) -> int:
        return self.oid


# --- tokens ----------------------------------------------------------------------------------


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # jaxdescent
    return tuple(os.path.abspath(r) + os.sep for r in roots if r)


@functools.lru_cache(maxsize=4096)
def _is_library_module(name: str | None) -> bool:
    """Whether ``name`` is a module of an installed package, the standard library or
    jaxdescent: its globals are taken as fixed while the process runs."""
    if not name:
        return False
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is None:
        return name in sys.builtin_module_names
    return _is_library_file(path)


@functools.lru_cache(maxsize=4096)
def _is_library_file(path: str) -> bool:
    """Whether source ``path`` belongs to an installed package, the standard library or
    jaxdescent (a script, a notebook cell or a test does not)."""
    if not os.path.isabs(path):  # "<stdin>", "<ipython-input-3>", an exec'd string
        return False
    path = os.path.abspath(path)
    return any(path.startswith(root) for root in _library_roots())


@functools.lru_cache(maxsize=8192)
def _global_names(code: types.CodeType) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The global names ``code`` (and the code nested in it) reads, each with the attributes
    read right off it (``config.LR`` reads ``LR`` of the global ``config``)."""
    names: dict[str, list[str]] = {}
    last = None
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            last = ins.argval
            names.setdefault(last, [])
            continue
        if last is not None and ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            if ins.argval not in names[last]:
                names[last].append(ins.argval)
        last = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            for name, attrs in _global_names(const):
                known = names.setdefault(name, [])
                known.extend(a for a in attrs if a not in known)
    return tuple((name, tuple(attrs)) for name, attrs in names.items())


def _float_key(x: float) -> Hashable:
    return struct.pack("<d", x)  # nan equals nan, 0.0 differs from -0.0


class _Maker:
    """Builds one token: remembers the objects on the path (cycles) and what to watch."""

    def __init__(self):
        self.active: dict[int, int] = {}
        self.watch: list = []

    def identity(self, obj: Any) -> _Identity:
        return _Identity(obj, self.watch)

    def make(self, obj: Any, depth: int = 0) -> Hashable:
        kind = type(obj)
        if obj is None or kind in (bool, int, str, bytes):
            return (kind, obj)
        if kind is float:
            return (float, _float_key(obj))
        if kind is complex:
            return (complex, _float_key(obj.real), _float_key(obj.imag))
        if isinstance(obj, jax.core.Tracer):
            raise Traced(obj)
        if isinstance(obj, (np.ndarray, np.generic)):
            return self.numpy(obj)
        if isinstance(obj, jax.Array):
            return self.jax_array(obj)
        if isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType, types.CodeType)):
            return ("fixed", obj)
        if isinstance(obj, (np.dtype, enum.Enum, bool, int, float, complex, str, bytes)):
            return (kind, obj)  # subclasses of the plain types (IntEnum, np.float64, ...)
        if depth > MAX_DEPTH:
            return self.identity(obj)
        if id(obj) in self.active:  # a cycle: a function that refers to itself
            return ("cycle", self.active[id(obj)])
        self.active[id(obj)] = len(self.active)
        try:
            return self.compound(obj, depth + 1)
        finally:
            del self.active[id(obj)]

    def numpy(self, obj) -> Hashable:
        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            return self.identity(obj)
        if arr.size <= SMALL_ARRAY:
            return ("array", arr.shape, arr.dtype.str, arr.tobytes())
        # changed in place it must not match: identity and a digest of its bytes
        data = memoryview(np.ascontiguousarray(arr)).cast("B")
        digest = hashlib.blake2b(data, digest_size=16).digest()
        return ("numpy", self.identity(obj), arr.shape, arr.dtype.str, digest)

    def jax_array(self, obj) -> Hashable:
        if obj.size <= SMALL_ARRAY and not jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            try:
                arr = np.asarray(obj)
            except Exception:  # spread over processes: not addressable here
                return self.identity(obj)
            return ("array", arr.shape, arr.dtype.str, arr.tobytes(), getattr(obj, "weak_type", 0))
        return ("jax", self.identity(obj))

    def compound(self, obj: Any, depth: int) -> Hashable:
        make = functools.partial(self.make, depth=depth)
        if isinstance(obj, functools.partial):
            return ("partial", make(obj.func), make(obj.args), make(obj.keywords))
        if isinstance(obj, types.FunctionType):
            return self.function(obj, depth)
        if isinstance(obj, types.MethodType):
            return ("method", make(obj.__func__), make(obj.__self__))
        if isinstance(obj, (tuple, list)):
            if len(obj) > MAX_ITEMS:
                return self.identity(obj)
            return (type(obj), tuple(make(x) for x in obj))
        if isinstance(obj, dict):
            if len(obj) > MAX_ITEMS:
                return self.identity(obj)
            return (type(obj), tuple((make(k), make(v)) for k, v in obj.items()))
        if isinstance(obj, (set, frozenset)):
            if len(obj) > MAX_ITEMS:
                return self.identity(obj)
            return (type(obj), frozenset(make(x) for x in obj))
        return self.instance(obj, depth)

    def function(self, fn: types.FunctionType, depth: int) -> Hashable:
        make = functools.partial(self.make, depth=depth)
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(make(cell.cell_contents))
            except ValueError:  # an empty cell
                cells.append(("empty",))
        attrs = make(dict(fn.__dict__)) if fn.__dict__ else ()
        parts = [
            "function",
            fn.__code__,
            make(fn.__defaults__),
            make(fn.__kwdefaults__),
            tuple(cells),
            attrs,
        ]
        if not _is_library_file(fn.__code__.co_filename):
            parts.append(self.globals_read(fn, depth))
        return tuple(parts)

    def globals_read(self, fn: types.FunctionType, depth: int) -> Hashable:
        namespace = fn.__globals__
        read = []
        for name, attrs in _global_names(fn.__code__):
            if name in namespace:
                value = namespace[name]
                if isinstance(value, types.ModuleType) and not _is_library_module(
                    value.__name__
                ):  # a module of the user's: the attributes read off it
                    parts = tuple((a, self.make(getattr(value, a, None), depth)) for a in attrs)
                    read.append((name, ("module", value, parts)))
                else:
                    read.append((name, self.make(value, depth)))
            elif hasattr(builtins, name):
                read.append((name, ("builtin", name)))
            else:
                read.append((name, ("missing",)))
        return tuple(read)

    def instance(self, obj: Any, depth: int) -> Hashable:
        """An object by its type and a snapshot of its attributes (``__dict__`` and slots);
        one with neither (or an opaque C object) by identity."""
        attrs: dict[str, Any] = {}
        try:
            attrs.update(vars(obj))
        except TypeError:
            pass
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()) or ():
                if slot in ("__weakref__", "__dict__") or slot in attrs:
                    continue
                try:
                    attrs[slot] = getattr(obj, slot)
                except AttributeError:
                    continue
        if not attrs and not _is_plain(type(obj)):
            if _value_equality(obj):  # an immutable C object such as a tree structure
                return ("value", type(obj), obj)
            return self.identity(obj)
        if len(attrs) > MAX_ITEMS:
            return self.identity(obj)
        make = functools.partial(self.make, depth=depth)
        return ("object", type(obj), tuple((k, make(v)) for k, v in attrs.items()))


def _value_equality(obj: Any) -> bool:
    """Hashable, with an ``__eq__`` of its own type (not identity)."""
    try:
        hash(obj)
    except TypeError:
        return False
    return type(obj).__eq__ is not object.__eq__


def _is_plain(cls: type) -> bool:
    """A Python class whose instances hold nothing outside their attributes (not a C
    extension type with hidden state)."""
    return all(c is object or "__dict__" in vars(c) or "__slots__" in vars(c) for c in cls.__mro__)


def token(obj: Any) -> tuple[Hashable, list]:
    """``(key, watch)``: a hashable key equal for objects that compute the same thing given
    what they read (module docstring), and weak references to the objects keyed by
    identity. Raises :class:`Traced` if ``obj`` reaches a JAX tracer."""
    maker = _Maker()
    return maker.make(obj), maker.watch


# --- entries ---------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("__weakref__", "key", "refs", "value")

    def __init__(self, key: Hashable, value: Any, watch: list):
        self.key = key
        self.value = value
        # when a watched object dies, the entry goes (its callback holds the entry weakly)
        me = weakref.ref(self)
        self.refs = [
            weakref.ref(r(), functools.partial(_drop, me)) for r in watch if r() is not None
        ]


def _drop(entry_ref, _dead) -> None:
    entry = entry_ref()
    if entry is None:
        return
    with _lock:
        if _entries.get(entry.key) is entry:
            del _entries[entry.key]


def memo(parts: Any, build: Callable[[], Any], *, watch: tuple = ()) -> Any:
    """``build()``, cached under the token of ``parts`` (any objects, e.g. a tuple of the loss,
    the optimizer's update and static settings); the entry is also dropped when an object of
    ``watch`` dies. Raises :class:`Traced` when ``parts`` reaches a tracer: a program cannot
    be kept for values of an outer transformation."""
    key, watched = token(parts)
    for obj in watch:
        _Identity(obj, watched)
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            _entries.move_to_end(key)
            return entry.value
    value = build()
    with _lock:
        entry = _Entry(key, value, watched)
        if any(r() is None for r in watched):  # something it names already died
            return value
        _entries[key] = entry
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)
    return value


def cached(owner: Callable, key: Hashable, build: Callable[[], Any]) -> Any:
    """``build()`` for ``owner`` (a user's callable) and ``key``: :func:`memo` of both,
    dropped when ``owner`` dies. ``build`` may close over :func:`owner_ref` of ``owner``
    (never ``owner`` itself), so the entry does not keep it alive."""
    target = owner.__self__ if isinstance(owner, types.MethodType) else owner
    return memo((owner, key), build, watch=(target,))


def owner_ref(owner: Callable) -> Callable[[], Any]:
    """A zero-argument callable returning ``owner``, holding it weakly when it can."""
    try:
        if isinstance(owner, types.MethodType):
            return weakref.WeakMethod(owner)
        return weakref.ref(owner)
    except TypeError:
        return lambda: owner


class Program:
    """A jitted function of the *current* call's callables: ``program(objects, *args)``.

    ``fn(objects, *args)`` is traced with the ``objects`` of the call that traces it;
    ``objects`` never enter the compiled program as arguments and are not kept after the
    call (so a cache entry holds no user object). Calls that share a program pass objects
    with equal tokens, which trace to the same program.
    """

    def __init__(self, fn: Callable, **jit_kwargs: Any):
        self._local = threading.local()
        local = self._local

        def traced(*args):
            return fn(local.objects, *args)

        self._jitted = jax.jit(traced, **jit_kwargs)

    def __call__(self, objects: Any, *args: Any) -> Any:
        local = self._local
        previous = getattr(local, "objects", None)
        local.objects = objects
        try:
            return self._jitted(*args)
        finally:
            local.objects = previous

    def lower(self, objects: Any, *args: Any):
        """``jax.jit(...).lower`` for these objects (tests inspect the program)."""
        local = self._local
        local.objects = objects
        try:
            return self._jitted.lower(*args)
        finally:
            local.objects = None


def clear_cache() -> None:
    """Drop every compiled program jaxdescent keeps (``jd.clear_cache()``).

    The next ``fit``, ``solve``, ``multistart`` or diagnostic compiles afresh. Programs are
    otherwise dropped when an object they are keyed by identity is garbage collected, or
    when more than ``MAX_ENTRIES`` are kept; call ``jax.clear_caches()`` as well to free
    JAX's own caches.
    """
    with _lock:
        _entries.clear()


def size() -> int:
    """Number of cached programs (for tests and diagnostics)."""
    with _lock:
        return len(_entries)
