"""What :func:`jaxdescent.fit` and :func:`jaxdescent.multistart` return.

A run ends with a :class:`Status`: ``CONVERGED`` (the gradient-norm test ``tol`` held),
``MAX_STEPS`` (the step budget was spent) or ``NONFINITE`` (a non-finite loss or gradient was
met; the run returns the last parameters at which both were finite).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FitResult", "Minima", "MultistartResult", "Status"]


class Status(enum.IntEnum):
    """How a run ended (``RUNNING`` only while it goes on)."""

    RUNNING = 0
    CONVERGED = 1
    MAX_STEPS = 2
    NONFINITE = 3


class FitResult(NamedTuple):
    """The outcome of :func:`fit`.

    Attributes:
      params: final parameters (the last ones with finite loss and gradient).
      opt_state: optimizer state after the last accepted update.
      losses: loss at each step's incoming params, shape ``(steps,)``; ``nan`` after the run
        stopped (converged or non-finite), since those steps were not computed.
      grad_norms: global gradient norm at each step, likewise.
      steps_taken: number of updates applied to reach ``params``.
      status: a :class:`Status` code (``CONVERGED``, ``MAX_STEPS`` or ``NONFINITE``).
      final_loss: the loss at ``params`` on the whole data set.
    """

    params: Any
    opt_state: Any
    losses: jax.Array
    grad_norms: jax.Array
    steps_taken: jax.Array
    status: jax.Array
    final_loss: jax.Array

    @property
    def converged(self) -> jax.Array:
        """Whether the gradient norm fell below ``tol``."""
        return self.status == Status.CONVERGED


class MultistartResult(NamedTuple):
    """The outcome of :func:`multistart`; every array has a leading restart axis.

    Restart ``i`` is the same run as ``fit(loss, init(init_keys[i]), optimizer,
    key=fit_keys[i], ...)``.
    """

    params: Any
    opt_state: Any
    losses: jax.Array
    grad_norms: jax.Array
    steps_taken: jax.Array
    status: jax.Array
    final_losses: jax.Array
    init_keys: jax.Array
    fit_keys: jax.Array

    @property
    def best_index(self) -> int:
        """The restart with the lowest final loss; restarts that ended non-finite never win."""
        ok = (self.status != Status.NONFINITE) & jnp.isfinite(self.final_losses)
        return int(jnp.argmin(jnp.where(ok, self.final_losses, jnp.inf)))

    @property
    def best_params(self) -> Any:
        """The params of restart :attr:`best_index` (the leading restart axis removed)."""
        i = self.best_index
        return jax.tree.map(lambda x: x[i], self.params)

    @property
    def converged(self) -> jax.Array:
        """Per restart, whether its gradient norm fell below ``tol``."""
        return self.status == Status.CONVERGED


class Minima(NamedTuple):
    """Distinct solutions found by a multistart: representatives, labels and counts."""

    params: Any
    labels: np.ndarray
    counts: np.ndarray
