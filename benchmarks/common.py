"""Timing, compile-time accounting, machine description and result records for the cases.

Protocol for every timed entry: one warm-up call (which traces and compiles; its time and
the compile time JAX reports during it are recorded), then ``repeats`` timed calls, each
ending in ``jax.block_until_ready`` on everything the call returns; the median is the figure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp

# The JAX events whose durations make up "compile time": tracing to a jaxpr, lowering to
# StableHLO, and XLA's backend compilation.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@dataclasses.dataclass(frozen=True)
class Size:
    """How big to make each case: ``full`` (the issue's sizes), ``quick``, or ``tiny`` (tests)."""

    name: str
    repeats: int

    @property
    def full(self) -> bool:
        return self.name == "full"

    @property
    def tiny(self) -> bool:
        return self.name == "tiny"

    def pick(self, full, quick, tiny):
        return {"full": full, "quick": quick, "tiny": tiny}[self.name]


SIZES = {"full": Size("full", 7), "quick": Size("quick", 5), "tiny": Size("tiny", 1)}


class _CompileClock:
    """Sums JAX's compile-event durations while active."""

    def __init__(self) -> None:
        self.total = 0.0
        self.active = False

    def __call__(self, event: str, duration: float, **_: Any) -> None:
        if self.active and event in _COMPILE_EVENTS:
            self.total += duration


_CLOCK = _CompileClock()
_REGISTERED = False


@contextlib.contextmanager
def compile_clock():
    """Yields a callable returning the compile seconds JAX recorded inside the block."""
    global _REGISTERED
    if not _REGISTERED:
        jax.monitoring.register_event_duration_secs_listener(_CLOCK)
        _REGISTERED = True
    start = _CLOCK.total
    _CLOCK.active = True
    try:
        yield lambda: _CLOCK.total - start
    finally:
        _CLOCK.active = False


def block(tree: Any) -> Any:
    """``block_until_ready`` on every JAX array in ``tree`` (other leaves pass through)."""
    return jax.tree.map(lambda x: x.block_until_ready() if isinstance(x, jax.Array) else x, tree)


@dataclasses.dataclass
class Timing:
    median_s: float
    runs_s: list[float]
    first_call_s: float
    compile_s: float
    result: Any = dataclasses.field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {
            "median_s": self.median_s,
            "runs_s": self.runs_s,
            "first_call_s": self.first_call_s,
            "compile_s": self.compile_s,
        }


def measure(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> Timing:
    """Warm up ``fn`` once (recording compile time), then time ``repeats`` calls."""
    first = float("nan")
    compile_s = 0.0
    result = None
    if warmup:
        with compile_clock() as compiled:
            t0 = time.perf_counter()
            result = block(fn())
            first = time.perf_counter() - t0
            compile_s = compiled()
    runs = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = block(fn())
        runs.append(time.perf_counter() - t0)
    return Timing(statistics.median(runs), runs, first, compile_s, result)


def measure_fresh(call: Callable[[int], Any], repeats: int) -> Timing:
    """Time ``repeats`` calls ``call(0), call(1), ...`` that each build their optimizer
    afresh (inside the timed call, usually with a hyperparameter that differs call to call),
    as a user sweeping a learning rate from Python does. There is no warm-up: what a call
    compiles is what a fresh object costs. ``compile_s`` is the most any of the calls
    compiled (zero: none compiled anything), ``first_call_s`` the first call's time."""
    runs, compiles = [], []
    result = None
    for i in range(max(1, repeats)):
        with compile_clock() as compiled:
            t0 = time.perf_counter()
            result = block(call(i))
            runs.append(time.perf_counter() - t0)
            compiles.append(compiled())
    return Timing(statistics.median(runs), runs, runs[0], max(compiles), result)


def fresh_value(base: float, i: int) -> float:
    """The hyperparameter of fresh call ``i``: ``base`` moved by ``(i + 1)`` percent, so
    no two calls share a value (nor any with the warm rows' ``base``)."""
    return base * (1.0 + 0.01 * (i + 1))


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Machine, Python and library versions, recorded with every result file."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    packages = ["jaxdescent", "jax", "jaxlib", "optax", "numpy", "scipy", "scikit-learn", "torch"]
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {p: _version(p) for p in packages},
    }


def entry(name: str, timing: Timing | None, **extra: Any) -> dict:
    """One row of a case: a method, its timing, and any extra figures."""
    row = {"method": name}
    if timing is not None:
        row.update(timing.as_dict())
    row.update(extra)
    return row


def case_record(
    number: int,
    title: str,
    rows: list[dict],
    *,
    targets: list[dict] | None = None,
    notes: str = "",
    params: dict | None = None,
) -> dict:
    """The record of one case: its rows, targets (each with ``met``), notes and sizes."""
    return {
        "case": number,
        "title": title,
        "params": params or {},
        "rows": rows,
        "targets": targets or [],
        "notes": notes,
    }


def target(description: str, ratio: float, threshold: float, *, at_most: bool) -> dict:
    """A target on a ratio: ``ratio <= threshold`` (``at_most``) or ``ratio >= threshold``."""
    met = ratio <= threshold if at_most else ratio >= threshold
    return {
        "target": description,
        "ratio": ratio,
        "threshold": threshold,
        "at_most": at_most,
        "met": bool(met),
    }


def needs(*modules: str) -> Callable:
    """Declare the peer libraries (import names, e.g. ``"sklearn"``) a case cannot run
    without. The runner reports a case whose peer is not installed as skipped, with the
    reason, instead of failing. A peer that only adds a row to a case is checked inside the
    case with :func:`missing_peers` (that row is then reported as skipped)."""

    def declare(case: Callable) -> Callable:
        case.peers = tuple(modules)
        return case

    return declare


def missing_peers(*modules: str) -> str | None:
    """Why a comparison cannot run, e.g. ``"scipy, sklearn not installed"``; None if it can."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed" if missing else None


def dtype_name() -> str:
    return str(jnp.zeros(()).dtype)
