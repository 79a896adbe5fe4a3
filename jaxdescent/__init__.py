"""jaxdescent: gradient-based optimization in JAX, from pure functions.

A learning problem has four swappable parts: data (a pytree of arrays), a cost function (the
negative log-likelihood of a conditional distribution), a model family (``init``/``apply``
pure functions) and an optimization procedure (an optax transformation driven by one
compiled loop).
"""

from jaxdescent import (
    checkpoint,
    data,
    diagnostics,
    inference,
    likelihoods,
    losses,
    models,
    nist,
    optim,
    plotting,
    problems,
    results,
    schedules,
)
from jaxdescent._engine.cache import clear_cache
from jaxdescent.multistart import distinct_minima, multistart, restart_keys
from jaxdescent.results import FitResult, Minima, MultistartResult, Status
from jaxdescent.solver import Solution, solve
from jaxdescent.train import fit, make_step

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "Minima",
    "MultistartResult",
    "Solution",
    "Status",
    "__version__",
    "checkpoint",
    "clear_cache",
    "data",
    "diagnostics",
    "distinct_minima",
    "fit",
    "inference",
    "likelihoods",
    "losses",
    "make_step",
    "models",
    "multistart",
    "nist",
    "optim",
    "plotting",
    "problems",
    "restart_keys",
    "results",
    "schedules",
    "solve",
]
