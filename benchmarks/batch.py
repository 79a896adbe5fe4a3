"""Case 9 (``batch``): fitting many small curves at once, Gpufit's benchmark problem.

A 2-D Gaussian (amplitude, centre x and y, width, background: 5 parameters) on 5 x 5 pixels
with Poisson noise, float32, 10 Levenberg-Marquardt steps per fit (Przybylski et al.,
*Gpufit: An open-source toolkit for GPU-accelerated curve fitting*, Scientific Reports 7,
2017). ``jax.jit(jax.vmap(jd.solve))`` with ``levenberg_marquardt`` against a hand-written
vmapped LM (Marquardt's damping, one linear solve per step), optimistix's vmapped
``LevenbergMarquardt`` and a SciPy ``least_squares(method="lm")`` loop, first call
(compilation included) and warm, at 10^4 and 10^5 fits (``full``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdescent as jd
from benchmarks.common import Size, case_record, entry, measure, missing_peers, target

STEPS = 10
PIXELS = 5


def grid() -> jax.Array:
    """The pixel centres, ``(25, 2)``."""
    i, j = np.meshgrid(np.arange(PIXELS), np.arange(PIXELS), indexing="ij")
    return jnp.asarray(np.stack([i.ravel(), j.ravel()], 1), jnp.float32)


def gauss2d(p: jax.Array, xy: jax.Array) -> jax.Array:
    """``p = (amplitude, x0, y0, width, background)`` at the pixels ``xy``."""
    r2 = (xy[:, 0] - p[1]) ** 2 + (xy[:, 1] - p[2]) ** 2
    return p[0] * jnp.exp(-r2 / (2.0 * p[3] ** 2)) + p[4]


def problem(fits: int, seed: int = 0):
    """``(truth, starts, counts)``: Gpufit's example values (amplitude 500, width 1,
    background 10, centres within 0.5 px of the middle), starts off by up to 10% and 0.2 px,
    Poisson counts."""
    rng = np.random.default_rng(seed)
    truth = np.empty((fits, 5), np.float32)
    truth[:, 0] = 500.0
    truth[:, 1:3] = (PIXELS - 1) / 2 + rng.uniform(-0.5, 0.5, (fits, 2))
    truth[:, 3] = 1.0
    truth[:, 4] = 10.0
    starts = truth * rng.uniform(0.9, 1.1, truth.shape).astype(np.float32)
    starts[:, 1:3] = truth[:, 1:3] + rng.uniform(-0.2, 0.2, (fits, 2))
    mean = np.asarray(jax.vmap(lambda p: gauss2d(p, grid()))(jnp.asarray(truth)))
    counts = rng.poisson(mean).astype(np.float32)
    return jnp.asarray(truth), jnp.asarray(starts), jnp.asarray(counts)


def jd_batch(xy):
    loss = jd.losses.nll(gauss2d, jd.likelihoods.Gaussian())
    rule = jd.optim.levenberg_marquardt()

    def one(start, y):
        return jd.solve(loss, start, rule, data=(xy, y), steps=STEPS)

    return jax.jit(jax.vmap(one))


def hand_lm(xy):
    """Plain LM: ``(J^T J + lambda diag(J^T J)) d = -J^T r``, lambda / 10 on a step that lowers
    the sum of squares, x 10 otherwise (a rejected step is a step)."""

    def residual(p, y):
        return gauss2d(p, xy) - y

    def fit(p, y):
        def step(c, _):
            p, lam, chi2 = c
            r = residual(p, y)
            jac = jax.jacfwd(residual)(p, y)
            a = jac.T @ jac
            g = jac.T @ r
            d = jnp.linalg.solve(a + lam * jnp.diag(jnp.diag(a)), -g)
            new = p + d
            chi2_new = jnp.sum(residual(new, y) ** 2)
            better = chi2_new < chi2
            p = jnp.where(better, new, p)
            lam = jnp.where(better, lam / 10.0, lam * 10.0)
            return (p, lam, jnp.where(better, chi2_new, chi2)), None

        start = (p, jnp.asarray(1e-3, p.dtype), jnp.sum(residual(p, y) ** 2))
        (p, _, chi2), _ = jax.lax.scan(step, start, None, length=STEPS)
        return p, chi2

    return jax.jit(jax.vmap(fit))


def optimistix_lm(xy):
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)

    def fit(p, y):
        sol = optx.least_squares(
            lambda p, y: gauss2d(p, xy) - y, solver, p, args=y, max_steps=STEPS, throw=False
        )
        return sol.value

    return jax.jit(jax.vmap(fit))


def scipy_loop(xy, starts, counts):
    from scipy.optimize import least_squares

    xy = np.asarray(xy, np.float64)

    def model(p):
        r2 = (xy[:, 0] - p[1]) ** 2 + (xy[:, 1] - p[2]) ** 2
        return p[0] * np.exp(-r2 / (2.0 * p[3] ** 2)) + p[4]

    def jac(p):
        r2 = (xy[:, 0] - p[1]) ** 2 + (xy[:, 1] - p[2]) ** 2
        e = np.exp(-r2 / (2.0 * p[3] ** 2))
        return np.stack(
            [e, p[0] * e * (xy[:, 0] - p[1]) / p[3] ** 2, p[0] * e * (xy[:, 1] - p[2]) / p[3] ** 2,
             p[0] * e * r2 / p[3] ** 3, np.ones_like(e)], 1,
        )  # fmt: skip

    starts, counts = np.asarray(starts, np.float64), np.asarray(counts, np.float64)

    def run():
        out = np.empty_like(starts)
        for i in range(starts.shape[0]):
            out[i] = least_squares(
                lambda p, y=counts[i]: model(p) - y, starts[i], jac=jac, method="lm",
                max_nfev=STEPS + 1,
            ).x  # fmt: skip
        return out

    return run


def _error(params, truth) -> float:
    """Median absolute error of the centre, in pixels (what a localisation cares about)."""
    return float(np.median(np.abs(np.asarray(params)[:, 1:3] - np.asarray(truth)[:, 1:3])))


def case9(size: Size) -> dict:
    """Batch fitting: 2-D Gaussians on 5x5 pixels, jit(vmap(jd.solve)) with LM against a
    hand-written vmapped LM, optimistix under vmap and a SciPy loop (float32, 10 steps)."""
    counts_list = size.pick([10_000, 100_000], [20_000], [200])
    scipy_fits = size.pick(1_000, 300, 20)
    xy = grid()
    rows, targets = [], []
    for fits in counts_list:
        truth, starts, counts = problem(fits)
        ours = jd_batch(xy)
        hand = hand_lm(xy)
        t_ours = measure(lambda: ours(starts, counts), size.repeats)
        t_hand = measure(lambda: hand(starts, counts), size.repeats)
        sols = t_ours.result
        status = np.asarray(sols.status)
        rows.append(entry(
            f"jd.solve LM, jit(vmap), {fits:,} fits", t_ours,
            fits_per_s=fits / t_ours.median_s, centre_error_px=_error(sols.params, truth),
            finite=int(np.sum(status != jd.Status.NONFINITE)),
        ))  # fmt: skip
        rows.append(entry(
            f"hand-written vmapped LM, {fits:,} fits", t_hand,
            fits_per_s=fits / t_hand.median_s, centre_error_px=_error(t_hand.result[0], truth),
        ))  # fmt: skip
        ratio = t_ours.median_s / t_hand.median_s
        targets.append(target(f"jd / hand LM at {fits:,} fits <= 1.25", ratio, 1.25,
                              at_most=True))  # fmt: skip
        reason = missing_peers("optimistix")
        if reason:
            rows.append({"method": f"optimistix LM under vmap, {fits:,} fits", "skipped": reason})
        else:
            optx_run = optimistix_lm(xy)
            t_optx = measure(lambda: optx_run(starts, counts), size.repeats)
            rows.append(entry(
                f"optimistix LM under vmap, {fits:,} fits", t_optx,
                fits_per_s=fits / t_optx.median_s, centre_error_px=_error(t_optx.result, truth),
            ))  # fmt: skip
            targets.append(target(f"jd / optimistix at {fits:,} fits < 1", t_ours.median_s /
                                  t_optx.median_s, 1.0, at_most=True))  # fmt: skip
    reason = missing_peers("scipy")
    if reason:
        rows.append({"method": "SciPy least_squares loop", "skipped": reason})
    else:
        truth, starts, counts = problem(scipy_fits, seed=1)
        t0 = time.perf_counter()
        fitted = scipy_loop(xy, starts, counts)()
        per_fit = (time.perf_counter() - t0) / scipy_fits
        rows.append({
            "method": f"SciPy least_squares(method='lm') loop, {scipy_fits:,} fits",
            "median_s": per_fit * scipy_fits, "fits_per_s": 1.0 / per_fit,
            "centre_error_px": _error(fitted, truth),
        })  # fmt: skip
        ours_rate = rows[0]["fits_per_s"]
        targets.append(target("jd fits/s over the SciPy loop's >= 50", ours_rate * per_fit, 50.0,
                              at_most=False))  # fmt: skip
    return case_record(
        9,
        "Batch fitting: 2-D Gaussians on 5x5 pixels (Gpufit's problem), LM, float32",
        rows,
        targets=targets,
        notes=(
            "first call includes compilation; centre_error_px is the median absolute error of "
            "the fitted centres against the truth (Poisson noise). SciPy's row is one pass "
            "of its loop (it compiles nothing)."
        ),
        params={"fits": counts_list, "steps": STEPS, "scipy_fits": scipy_fits},
    )
