"""Case 10: many small fits at once, the Gpufit workload: Levenberg-Marquardt and Gauss-Newton
stepped under ``jax.vmap`` against a plain hand-written vmapped Levenberg-Marquardt.

Each fit is a 2-D Gaussian spot, ``a exp(-((u - u0)^2 + (v - v0)^2) / (2 s^2)) + b`` (five
parameters), on 5 x 5 pixels with Poisson-like noise, in float32. All fits take the same
number of steps in one ``lax.scan`` under ``vmap`` (what the pure solve issue batches), so
the figure is the time per step of the whole batch: under ``vmap`` every inner loop of a
rule would run for its slowest fit, and both sides of every ``cond`` run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxdescent as jd
from benchmarks.common import Size, case_record, entry, target
from benchmarks.second_order import interleaved

PIXELS = 5
STEPS = 20


def _grid() -> jax.Array:
    g = jnp.arange(float(PIXELS), dtype=jnp.float32)
    return jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


def spot(p: jax.Array, uv: jax.Array) -> jax.Array:
    """The model: a 2-D Gaussian of amplitude ``p[0]``, centre ``p[1:3]``, width ``p[3]`` on
    a background ``p[4]``, at the pixels ``uv`` (``(25, 2)``)."""
    r2 = (uv[:, 0] - p[1]) ** 2 + (uv[:, 1] - p[2]) ** 2
    return p[0] * jnp.exp(-r2 / (2.0 * p[3] * p[3])) + p[4]


def _data(fits: int, seed: int = 0):
    """True parameters, noisy images and starts (off by 20% in amplitude, a third of a
    pixel in position, 0.2 in width and 2 counts in background)."""
    rng = np.random.default_rng(seed)
    true = np.stack(
        [
            rng.uniform(50, 150, fits),
            rng.uniform(1.5, 2.5, fits),
            rng.uniform(1.5, 2.5, fits),
            rng.uniform(0.8, 1.3, fits),
            rng.uniform(5, 15, fits),
        ],
        1,
    ).astype(np.float32)
    uv = _grid()
    clean = np.asarray(jax.vmap(lambda p: spot(p, uv))(jnp.asarray(true)))
    noisy = clean + rng.normal(size=clean.shape).astype(np.float32) * np.sqrt(np.maximum(clean, 1))
    start = true * np.float32([1.2, 1, 1, 1, 1]) + np.float32([0, 0.3, -0.3, 0.2, 2.0])
    return jnp.asarray(true), jnp.asarray(noisy, jnp.float32), jnp.asarray(start)


def stepped(rule, steps: int = STEPS):
    """``(starts, images) -> params``: ``steps`` updates of ``rule`` per fit, in a
    ``lax.scan`` under ``vmap``, each update called as ``jd.fit`` calls it (value and
    gradient of the loss, then ``update`` with the likelihood's extras)."""
    loss = jd.losses.nll(spot, jd.likelihoods.Gaussian())
    uv = _grid()

    def one(p, image):
        data = (uv, image)
        extras = loss.rule_extras(data)

        def value_fn(q):
            return loss(q, data)

        def body(carry, _):
            q, state = carry
            value, grad = jax.value_and_grad(value_fn)(q)
            update, state = rule.update(grad, state, q, value_fn=value_fn, value=value, **extras)
            return (q + update, state), None

        (q, _), _ = jax.lax.scan(body, (p, rule.init(p)), None, length=steps)
        return q

    return jax.jit(jax.vmap(one))


def hand_lm(steps: int = STEPS):
    """A plain Levenberg-Marquardt as one writes it for a batch (Gpufit's): Marquardt's
    damping ``J^T J + lambda diag(J^T J)``, one linear solve per step, lambda divided by 10
    after a step that lowers the sum of squares, multiplied by 10 after one that does not."""
    uv = _grid()

    def one(p, image):
        def residual(q):
            return spot(q, uv) - image

        def body(carry, _):
            q, lam, cost = carry
            r = residual(q)
            jac = jax.jacfwd(residual)(q)
            jtj = jac.T @ jac
            d = -jnp.linalg.solve(jtj + lam * jnp.diag(jnp.diag(jtj)), jac.T @ r)
            new = residual(q + d)
            new_cost = jnp.sum(new * new)
            better = new_cost < cost
            return (
                jnp.where(better, q + d, q),
                jnp.where(better, lam / 10.0, lam * 10.0),
                jnp.where(better, new_cost, cost),
            ), None

        r0 = residual(p)
        (q, _, _), _ = jax.lax.scan(
            body, (p, jnp.float32(1e-3), jnp.sum(r0 * r0)), None, length=steps
        )
        return q

    return jax.jit(jax.vmap(one))


def case10(size: Size) -> dict:
    """Many small fits under vmap: LM and Gauss-Newton against a hand-written vmapped LM."""
    fits = size.pick(20_000, 20_000, 200)
    repeats = size.pick(7, 5, 1)
    true, images, starts = _data(fits)
    runs = {
        "hand-written vmapped LM (jnp.linalg.solve)": hand_lm(),
        "jd levenberg_marquardt()": stepped(jd.optim.levenberg_marquardt()),
        "jd gauss_newton()": stepped(jd.optim.gauss_newton()),
    }
    timings = interleaved({k: (lambda f=f: f(starts, images)) for k, f in runs.items()}, repeats)
    base = timings["hand-written vmapped LM (jnp.linalg.solve)"]
    reference = np.asarray(base.result)
    rows, targets = [], []
    for name, t in timings.items():
        params = np.asarray(t.result)
        rows.append(
            entry(
                name,
                t,
                ms_per_step=1e3 * t.median_s / STEPS,
                ratio_to_hand_lm=t.median_s / base.median_s,
                median_error_vs_truth=float(np.median(np.abs(params - np.asarray(true)))),
                median_diff_vs_hand_lm=float(np.median(np.abs(params - reference))),
                finite=bool(np.all(np.isfinite(params))),
            )
        )
        if name.startswith("jd"):
            rule = name.split()[1]
            targets.append(
                target(
                    f"{rule} under vmap / hand-written LM <= 1.5 (time per step)",
                    t.median_s / base.median_s,
                    1.5,
                    at_most=True,
                )
            )
    return case_record(
        10,
        f"{fits:,} small fits under vmap: a 5-parameter 2-D Gaussian on {PIXELS} x {PIXELS} "
        f"pixels, float32, {STEPS} steps in a lax.scan",
        rows,
        targets=targets,
        notes=(
            "Each call runs every fit for the same number of steps (no early exit), so the "
            "median over the call divided by the steps is the time per step of the batch; "
            "calls interleaved round-robin in one process. jd rows call the rule as jd.fit "
            "does: jax.value_and_grad of the loss, then update(..., value_fn, value, "
            "model_fn, likelihood, targets). 'first call' includes compilation. "
            "median_error_vs_truth: the median absolute error of all parameters against the "
            "values the images were drawn from (noise limits it)."
        ),
        params={"fits": fits, "steps": STEPS, "pixels": PIXELS**2, "repeats": repeats},
    )
