r"""The damped Gauss-Newton system and its solvers: the fast one by shape, the safe one for
trouble.

:func:`~jaxdescent.optim.gauss_newton` and :func:`~jaxdescent.optim.levenberg_marquardt`
solve, once per update,

.. math:: (G + \mu\, \mathrm{diag}(e))\, d = -g, \qquad G = \tfrac1n J^\top F J,

in *column-scaled* coordinates: with ``s_j`` a column scale (``sqrt(G_jj)``, or Moré's
running maximum of it), ``z = s * d`` solves ``(G_s + mu e_s) z = -g / s`` with
``G_s = G / (s s^T)``, whose diagonal is at most 1. Scaling first makes the solve
independent of the parameters' units: in float32 a parameter of size 500 next to one of
size 5e-4 (NIST's Misra1a) is not lost to the other's rounding. Three solvers:

- ``"dense"``: ``G`` formed once from the Jacobian (one batched JVP of the model) and one
  Cholesky factorisation of ``G_s + mu e_s + delta I``, with a tiny shift ``delta = p eps``
  that keeps it positive definite where ``G`` is singular (a redundant parameter) and the
  damping is zero. ``O(m p^2 + p^3)`` per update; the fast path for small and medium ``p``.
- ``"svd"``: the safe path for trouble: the least-squares problem
  ``min ||A_s z + b||^2 + mu ||e_s^{1/2} z||^2`` (``A_s`` the weighted, scaled Jacobian)
  solved by an SVD of the stacked matrix, dropping singular values below
  ``eps max(m, p) s_max``: no squaring of the condition number, the minimum-norm step of a
  rank-deficient problem. About ten times the cost of ``"dense"``. (With a non-diagonal
  Fisher information, Categorical, an eigendecomposition of ``G_s`` instead.)
- ``"cg"``: conjugate gradients (:mod:`jaxdescent.optim.cg`) on GGN-vector products, one
  JVP and one VJP of the model each, never forming ``J`` or ``G``: ``O(k m p)`` time for
  ``k`` iterations and ``O(m + p)`` memory beyond the model's own.

``"auto"`` picks by the cost model of :func:`choose_solver`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdescent.optim.trust_region import finite

SOLVERS = ("auto", "dense", "svd", "cg")

# The cost model of solver="auto". Per update, the dense path forms J (p JVPs, as one
# matrix-matrix product: ~2 m p^2 flops) and G = A^T A (~2 m p^2) at matrix-matrix speed;
# CG spends k iterations of one JVP and one VJP (~4 m p flops) at matrix-vector speed,
# which memory bandwidth bounds. m cancels:
#
#     dense <= CG  <=>  4 m p^2 / R_mm <= 4 k m p / R_mv  <=>  p <= k R_mm / R_mv.
#
# R_mm / R_mv is a property of the hardware: how many flops a large matrix product does in
# the time a matrix-vector product does one. A few cores with vector units reach tens of
# GFLOP/s in products against a few in bandwidth-bound passes (about 10); a GPU's tensor
# cores against its memory bandwidth give about 40; a TPU's matrix units about 100. k, the
# CG iterations per solve, is taken as 25: a column-scaled, reasonably conditioned system
# to cg_tol = 1e-6. The Cholesky factorisation (p^3 / 3) and the m x p Jacobian's memory
# are not in the model: pass solver="cg" when the Jacobian does not fit in memory.
MATRIX_OVER_VECTOR = {"cpu": 10.0, "gpu": 40.0, "cuda": 40.0, "rocm": 40.0, "tpu": 100.0}
CG_ITERATIONS = 25


def after(x: jax.Array, dep: jax.Array) -> jax.Array:
    """``x``, computed after ``dep``: a data dependency XLA keeps, at no cost to the value.

    On XLA:CPU, jaxlib's batched LAPACK kernels (Cholesky, LU, eigendecomposition) split the
    batch over the intra-op thread pool and wait for it from a pool thread: two such calls
    running at once (independent operations the runtime schedules together, or both branches
    of a ``lax.cond`` under ``vmap``) can each hold a pool thread while waiting for the other
    (seen as a hang on 2 cores, jaxlib 0.10). ``jax.lax.optimization_barrier`` does not order
    independent operations there (it is removed before scheduling); adding
    ``0 * isnan(dep[0])`` does (XLA does not fold a floating-point product by zero, and the
    term is zero for any ``dep``, NaN included).
    """
    first = jnp.ravel(dep)[0]
    return x + jnp.isnan(first).astype(x.dtype) * jnp.zeros([], x.dtype)


def dense_limit(backend: str | None = None) -> int:
    """The most parameters ``solver="auto"`` solves densely on ``backend`` (default: JAX's
    default backend): ``CG_ITERATIONS * MATRIX_OVER_VECTOR[backend]``."""
    backend = backend or jax.default_backend()
    return int(CG_ITERATIONS * MATRIX_OVER_VECTOR.get(backend, MATRIX_OVER_VECTOR["cpu"]))


def choose_solver(solver: str, p: int, backend: str | None = None) -> str:
    """``"dense"``, ``"svd"`` or ``"cg"`` for ``p`` parameters: ``solver`` itself unless it
    is ``"auto"``, which is ``"dense"`` up to :func:`dense_limit` parameters, else ``"cg"``."""
    if solver != "auto":
        return solver
    return "dense" if p <= dense_limit(backend) else "cg"


def column_scale(gram: jax.Array) -> jax.Array:
    """``sqrt(diag G)``, the Jacobian's weighted column norms; zero and non-finite ones as 1
    (a parameter the outputs do not depend on is left where it is)."""
    c = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    return jnp.where((c > 0) & jnp.isfinite(c), c, 1.0)


def scaled(gram: jax.Array, grad: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(G / (s s^T), g / s)``, symmetric."""
    gs = gram / s[:, None] / s[None, :]
    return 0.5 * (gs + gs.T), grad / s


def shift(p: int, dtype) -> float:
    """The tiny shift of the dense solve, relative to a unit diagonal: ``p eps``."""
    return float(p * jnp.finfo(dtype).eps)


class Solved(NamedTuple):
    """``z`` solving ``M z = rhs`` for the damped matrix ``M``, and ``z . M^{-1} z``, the
    derivative Moré's secular update of the damping needs (``||q||^2`` with ``q = L^{-1} z``
    for ``M = L L^T``)."""

    z: jax.Array
    inverse_norm2: jax.Array


def solve_dense(gram_s: jax.Array, rhs: jax.Array, damping: jax.Array) -> Solved:
    """``z = (G_s + diag(damping) + delta I)^{-1} rhs`` by one Cholesky factorisation
    (non-finite where it fails): written out element by element for up to
    ``UNROLLED`` parameters (so that under ``vmap`` thousands of small systems are solved by
    vector instructions, where a LAPACK call per system costs about ten times as much),
    LAPACK's above."""
    p = rhs.shape[0]
    matrix = gram_s + jnp.diag(damping + shift(p, rhs.dtype))
    if p <= UNROLLED:
        return _unrolled_cholesky_solve(matrix, rhs)
    chol = jnp.linalg.cholesky(matrix)
    z = jax.scipy.linalg.cho_solve((chol, True), rhs)
    q = jax.scipy.linalg.solve_triangular(chol, z, lower=True)
    return Solved(z, jnp.vdot(q, q))


# the most parameters whose Cholesky factorisation is written out (p^3 / 6 operations)
UNROLLED = 8


def _unrolled_cholesky_solve(matrix: jax.Array, rhs: jax.Array) -> Solved:
    """Cholesky ``M = L L^T``, ``z = M^{-1} rhs`` and ``||L^{-1} z||^2``, entry by entry (a
    negative pivot gives NaN, as LAPACK's failure does)."""
    p = rhs.shape[0]
    low = [[None] * p for _ in range(p)]
    for j in range(p):
        pivot = matrix[j, j] - sum((low[j][k] * low[j][k] for k in range(j)), 0.0)
        low[j][j] = jnp.sqrt(pivot)
        for i in range(j + 1, p):
            low[i][j] = (matrix[i, j] - sum((low[i][k] * low[j][k] for k in range(j)), 0.0)) / low[
                j
            ][j]

    def forward(b):
        y = []
        for i in range(p):
            y.append((b[i] - sum((low[i][k] * y[k] for k in range(i)), 0.0)) / low[i][i])
        return y

    y = forward(rhs)
    z = [None] * p
    for i in reversed(range(p)):
        z[i] = (y[i] - sum((low[k][i] * z[k] for k in range(i + 1, p)), 0.0)) / low[i][i]
    q = forward(z)
    return Solved(jnp.stack(z), sum((v * v for v in q), 0.0))


def solve_svd(wjac_s: jax.Array, wres: jax.Array, damping: jax.Array) -> Solved:
    """``z`` minimising ``||A_s z + b||^2 + ||diag(damping)^{1/2} z||^2``, by an SVD of
    ``[A_s; diag(damping)^{1/2}]``; singular values below ``eps max(m, p) s_max`` dropped
    (the minimum-norm step)."""
    m, p = wjac_s.shape
    stacked = jnp.concatenate([wjac_s, jnp.diag(jnp.sqrt(jnp.maximum(damping, 0.0)))])
    u, s, vt = jnp.linalg.svd(stacked, full_matrices=False)
    cutoff = jnp.finfo(s.dtype).eps * max(m + p, p) * jnp.max(s)
    keep = s > cutoff
    inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    zt = -inv * (u[:m].T @ wres)
    return Solved(vt.T @ zt, jnp.sum((inv * zt) ** 2))


def solve_eigh(gram_s: jax.Array, rhs: jax.Array, damping: jax.Array) -> Solved:
    """``z = pinv(G_s + diag(damping)) rhs`` from an eigendecomposition; eigenvalues below
    ``eps p lam_max`` dropped."""
    lam, q = jnp.linalg.eigh(gram_s + jnp.diag(damping))
    cutoff = jnp.finfo(lam.dtype).eps * lam.size * jnp.max(jnp.abs(lam))
    keep = lam > cutoff
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    zt = inv * (q.T @ rhs)
    return Solved(q @ zt, jnp.sum(inv * zt**2))


def solve_scaled(kind: str, gram_s, grad_s, damping, wjac_s=None, wres=None) -> Solved:
    """``(G_s + diag(damping)) z = -grad_s`` by the solver ``kind`` (``"dense"`` or
    ``"svd"``; the SVD needs the scaled weighted Jacobian and residual, else it is an
    eigendecomposition)."""
    if kind == "svd" and wjac_s is not None:
        return solve_svd(wjac_s, wres, damping)
    if kind == "svd":
        return solve_eigh(gram_s, -grad_s, damping)
    return solve_dense(gram_s, -grad_s, damping)


def descent_or_gradient(z: jax.Array, grad_s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(z, ok)``: ``z`` where it is finite and a descent direction, else ``-grad_s``, the
    scaled gradient step (Newton's step for a unit diagonal: the Jacobi step)."""
    ok = finite(z) & (jnp.vdot(grad_s, z) < 0)
    return jnp.where(ok, z, -grad_s), ok
