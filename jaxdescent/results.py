"""What :func:`jaxdescent.fit` and :func:`jaxdescent.multistart` return.

A run ends with a :class:`Status`: ``CONVERGED`` (the gradient-norm test ``tol`` held),
``MAX_STEPS`` (the step budget was spent), ``NONFINITE`` (a non-finite loss or gradient was
met; the run returns the last parameters at which both were finite) or ``STALLED`` (the rule
could no longer change the parameters).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FitResult", "Minima", "MultistartResult", "Status"]


class Status(enum.IntEnum):
    """How a run ended (``RUNNING`` only while it goes on); ``str`` gives the name.

    ``CONVERGED``: the full-data gradient norm fell below ``tol`` (mini-batch runs included:
    a batch gradient below ``tol`` is confirmed on the whole data before the run stops).
    ``MAX_STEPS``: the step budget was spent without that. ``NONFINITE``: a non-finite loss or
    gradient was met; the run returned the last params at which both were finite.
    ``STALLED`` (full-batch runs of rules that can tell, e.g. ``levenberg_marquardt`` and the
    trust-region ``newton``): the rule's state showed that no later update could change the
    params (its trust region shrank below their rounding with no step taken), so the run
    stopped there. That is often a minimum that ``tol`` asks more of than the precision
    allows; nothing is claimed: check ``final_grad_norm``.
    """

    RUNNING = 0
    CONVERGED = 1
    MAX_STEPS = 2
    NONFINITE = 3
    STALLED = 4

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return (
            format(int(self), spec) if spec[-1:] in tuple("bcdoxXn") else format(self.name, spec)
        )

    @property
    def message(self) -> str:
        """A one-line explanation, as ``scipy.optimize.OptimizeResult.message``."""
        return _MESSAGES[self]


_MESSAGES = {
    Status.RUNNING: "the run has not ended",
    Status.CONVERGED: "the gradient norm fell below tol",
    Status.MAX_STEPS: "the step budget was spent before the gradient norm fell below tol",
    Status.NONFINITE: (
        "a non-finite loss or gradient was met; params are the last ones at which both were finite"
    ),
    Status.STALLED: (
        "the rule could make no further progress: no step it can take changes the params at "
        "their precision"
    ),
}


def _number(x: Any) -> str:
    try:
        return f"{float(x):.6g}"
    except (TypeError, ValueError):
        return "?"


class FitResult(NamedTuple):
    """The outcome of :func:`fit`.

    Attributes:
      params: final parameters (the last ones with finite loss and gradient).
      opt_state: optimizer state after the last accepted update.
      losses: the loss at the incoming params of every ``record_every``-th step run, in at
        least float32; the history ends where the run stopped (its memory is what was
        recorded, not the step budget).
      grad_norms: the global gradient norm at those steps, likewise (the batch's gradient for
        mini-batch runs).
      steps_taken: number of updates applied to reach ``params``.
      status: a :class:`Status` code (``CONVERGED``, ``MAX_STEPS``, ``NONFINITE`` or
        ``STALLED``).
      final_loss: the loss at ``params`` on the whole data set.
      final_grad_norm: the gradient norm at ``params`` on the whole data set.
      aux: with ``has_aux=True``, the loss's auxiliary output at ``params`` (whole data).
      trace: with ``trace=k``, the params at steps ``0, k, 2k, ...`` and at the end, stacked
        along a leading axis (a pytree like ``params``).
      wall_time: seconds the call took, compilation included.
    """

    params: Any
    opt_state: Any
    losses: jax.Array
    grad_norms: jax.Array
    steps_taken: jax.Array
    status: jax.Array
    final_loss: jax.Array
    final_grad_norm: jax.Array = None
    aux: Any = None
    trace: Any = None
    wall_time: float = float("nan")

    @property
    def converged(self) -> jax.Array:
        """Whether the gradient norm fell below ``tol``."""
        return self.status == Status.CONVERGED

    @property
    def success(self) -> bool:
        """``True`` when the run converged (as scipy's ``OptimizeResult.success``)."""
        return int(self.status) == Status.CONVERGED

    @property
    def message(self) -> str:
        """Why the run ended, in words."""
        return Status(int(self.status)).message

    def __repr__(self) -> str:
        return (
            f"FitResult(status={Status(int(self.status)).name}, steps_taken="
            f"{int(self.steps_taken)}, final_loss={_number(self.final_loss)}, "
            f"final_grad_norm={_number(self.final_grad_norm)}, "
            f"wall_time={self.wall_time:.3g} s)"
        )


class MultistartResult(NamedTuple):
    """The outcome of :func:`multistart`; every array has a leading restart axis.

    Restart ``i`` is the same run as ``fit(loss, init(init_keys[i]), optimizer,
    key=fit_keys[i], ...)``; the fields mean what :class:`FitResult`'s do, per restart.
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
    final_grad_norms: jax.Array = None
    aux: Any = None
    trace: Any = None
    wall_time: float = float("nan")

    @property
    def best_index(self) -> int:
        """The restart with the lowest final loss; restarts that ended non-finite never win.

        Raises ``ValueError`` when every restart ended non-finite.
        """
        ok = (self.status != Status.NONFINITE) & jnp.isfinite(self.final_losses)
        if not bool(jnp.any(ok)):
            raise ValueError(
                "every restart ended non-finite (status NONFINITE or a non-finite final loss): "
                "there is no best restart"
            )
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

    @property
    def success(self) -> np.ndarray:
        """Per restart, whether it converged."""
        return np.asarray(self.status) == Status.CONVERGED

    @property
    def message(self) -> str:
        """How the restarts ended, counted by status."""
        codes = np.asarray(self.status).reshape(-1)
        parts = [f"{int(np.sum(codes == s))} {s.name}" for s in Status if np.any(codes == s)]
        return f"{codes.size} restarts: " + ", ".join(parts)

    def __repr__(self) -> str:
        codes = np.asarray(self.status).reshape(-1)
        finite = np.asarray(self.final_losses)[(codes != Status.NONFINITE)]
        finite = finite[np.isfinite(finite)]
        best = (
            f"best_index={self.best_index}, best_loss={_number(finite.min())}, "
            if finite.size
            else "no finite restart, "
        )
        return (
            f"MultistartResult(restarts={codes.size}, {self.message.split(': ', 1)[1]}, "
            f"{best}wall_time={self.wall_time:.3g} s)"
        )


class Minima(NamedTuple):
    """Distinct solutions found by a multistart: representatives, labels and counts."""

    params: Any
    labels: np.ndarray
    counts: np.ndarray
