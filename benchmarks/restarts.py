"""Case 3: many restarts of Adam on Rosenbrock, ``jd.multistart`` against Python loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdescent as jd
from benchmarks.common import (
    Size,
    case_record,
    entry,
    fresh_value,
    measure,
    measure_fresh,
    target,
)

LEARNING_RATE = 1e-2


def rosenbrock(x):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1)."""
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def init(key):
    """A start drawn uniformly from [-2, 2]^2."""
    return jax.random.uniform(key, (2,), jnp.float32, -2.0, 2.0)


def _scan_from(key, opt, steps: int, norms: bool = False):
    """One restart's ``lax.scan``: ``(final params, losses)``, or with ``norms`` also the
    gradient norms (``(final params, (losses, norms))``, what ``multistart`` records)."""
    x = init(key)

    def body(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(rosenbrock)(p)
        u, s = opt.update(g, s, p)
        out = (value, jnp.sqrt(jnp.sum(g * g))) if norms else value
        return (optax.apply_updates(p, u), s), out

    (p, _), values = jax.lax.scan(body, (x, opt.init(x)), None, length=steps)
    return p, values


def single_scan_runner(steps: int):
    """One restart as a jitted ``lax.scan`` over ``optax.adam`` (the fastest single run)."""
    opt = optax.adam(LEARNING_RATE)
    return jax.jit(lambda key: _scan_from(key, opt, steps))


def vmapped_scan_runner(steps: int, learning_rate: float = LEARNING_RATE, norms: bool = False):
    """All restarts as one jitted ``vmap`` of the ``lax.scan`` (the hand-written batch)."""
    opt = optax.adam(learning_rate)
    return jax.jit(jax.vmap(lambda key: _scan_from(key, opt, steps, norms)))


def torch_restarts_runner(starts, steps: int):
    """``torch.optim.Adam`` on all restarts at once, or None without torch: the restarts'
    params are one ``(restarts, 2)`` tensor and the loss their summed Rosenbrock values, so
    each restart's gradient is its own and Adam (elementwise) runs each restart on its own,
    as ``multistart`` does."""
    try:
        import torch
    except ImportError:
        return None
    x0 = torch.from_numpy(np.array(starts))

    def run():
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
        losses = torch.empty(steps, x0.shape[0])
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            values = (1.0 - x[:, 0]) ** 2 + 100.0 * (x[:, 1] - x[:, 0] ** 2) ** 2
            values.sum().backward()
            opt.step()
            losses[i] = values.detach()
        return x.detach().numpy(), losses

    return run, torch.__version__, torch.get_num_threads()


def case3(size: Size) -> dict:
    restarts = size.pick(1_024, 1_024, 8)
    steps = size.pick(1_000, 1_000, 20)
    loop_subset = size.pick(32, 16, 2)
    curve = size.pick([1, 4, 16, 64, 256, 1_024, 4_096], [1, 16, 256, 1_024, 4_096], [8])
    r = size.repeats
    opt = jd.optim.adam(LEARNING_RATE)
    key = jax.random.key(0)

    def run_multi(count):
        return jd.multistart(init, rosenbrock, opt, key=key, restarts=count, steps=steps)

    multi_t = measure(lambda: run_multi(restarts), r)
    init_keys, _ = jd.restart_keys(key, restarts)
    sub_keys = init_keys[:loop_subset]

    scan_one = single_scan_runner(steps)

    def loop_scan():
        return [scan_one(k) for k in sub_keys]

    def loop_fit():
        return [jd.fit(rosenbrock, init(k), opt, steps=steps) for k in sub_keys]

    scan_loop_t = measure(loop_scan, max(3, r // 2))
    vmapped = vmapped_scan_runner(steps)
    vmap_t = measure(lambda: vmapped(init_keys), r)
    vmapped_norms = vmapped_scan_runner(steps, norms=True)
    vmap_norms_t = measure(lambda: vmapped_norms(init_keys), r)
    fit_loop_t = measure(loop_fit, max(3, r // 2))
    # the same runs: restart i of multistart equals fit from init(init_keys[i])
    agree = float(
        jnp.max(
            jnp.abs(
                multi_t.result.params[:loop_subset]
                - jnp.stack([res.params for res in fit_loop_t.result])
            )
        )
    )
    per_multi = multi_t.median_s / restarts
    per_scan = scan_loop_t.median_s / loop_subset
    per_fit = fit_loop_t.median_s / loop_subset
    rows = [
        entry(
            f"jd.multistart ({restarts} restarts)",
            multi_t,
            per_restart_us=1e6 * per_multi,
            converged_fraction=float(
                jnp.mean(jnp.linalg.norm(multi_t.result.params - 1.0, axis=-1) < 1e-2)
            ),
        ),
        entry(
            f"jitted vmap of lax.scan ({restarts} restarts)",
            vmap_t,
            per_restart_us=1e6 * vmap_t.median_s / restarts,
            ratio_multistart_over_this=multi_t.median_s / vmap_t.median_s,
            max_abs_diff_vs_multistart=float(
                jnp.max(jnp.abs(multi_t.result.params - vmap_t.result[0]))
            ),
        ),
        entry(
            f"jitted vmap of lax.scan recording gradient norms too ({restarts} restarts)",
            vmap_norms_t,
            per_restart_us=1e6 * vmap_norms_t.median_s / restarts,
            ratio_multistart_over_this=multi_t.median_s / vmap_norms_t.median_s,
        ),
        entry(
            f"Python loop of jitted lax.scan runs ({loop_subset} runs, scaled)",
            scan_loop_t,
            per_restart_us=1e6 * per_scan,
            ratio_per_restart_this_over_multistart=per_scan / per_multi,
        ),
        entry(
            f"Python loop of jd.fit ({loop_subset} runs, scaled)",
            fit_loop_t,
            per_restart_us=1e6 * per_fit,
            ratio_per_restart_this_over_multistart=per_fit / per_multi,
            max_abs_diff_vs_multistart=agree,
        ),
    ]
    torch_run = torch_restarts_runner(jax.vmap(init)(init_keys), steps)
    if torch_run is None:
        rows.append(entry("torch.optim.Adam (CPU)", None, skipped="torch not installed"))
    else:
        run_torch, torch_version, threads = torch_run
        torch_t = measure(run_torch, max(3, r // 2))
        rows.append(
            entry(
                f"torch.optim.Adam on a ({restarts}, 2) tensor (CPU)",
                torch_t,
                per_restart_us=1e6 * torch_t.median_s / restarts,
                ratio_this_over_multistart=torch_t.median_s / multi_t.median_s,
                max_abs_diff_vs_multistart=float(
                    np.max(np.abs(torch_t.result[0] - np.asarray(multi_t.result.params)))
                ),
                torch=torch_version,
                torch_threads=threads,
            )
        )
    # a fresh optimizer per call, as a Python sweep over learning rates makes one: multistart
    # reuses its compiled loop; the hand-written vmap, jitted over a closure holding the new
    # optax.adam, is compiled again each call
    for name, count, call in (
        (
            f"jd.multistart, a fresh jd.optim.adam(lr) per call ({restarts} restarts)",
            r,
            lambda i: jd.multistart(
                init,
                rosenbrock,
                jd.optim.adam(fresh_value(LEARNING_RATE, i)),
                key=key,
                restarts=restarts,
                steps=steps,
            ),
        ),
        (
            f"jitted vmap of lax.scan, a fresh optax.adam(lr) per call ({restarts} restarts)",
            max(1, r // 2),  # each call compiles
            lambda i: vmapped_scan_runner(steps, fresh_value(LEARNING_RATE, i))(init_keys),
        ),
    ):
        t = measure_fresh(call, count)
        rows.append(
            entry(
                name,
                t,
                per_restart_us=1e6 * t.median_s / restarts,
                ratio_this_over_multistart=t.median_s / multi_t.median_s,
            )
        )
    curve_rows = []
    for count in curve:
        t = measure(lambda count=count: run_multi(count), max(3, r // 2))
        curve_rows.append(
            {
                "restarts": count,
                "median_s": t.median_s,
                "per_restart_us": 1e6 * t.median_s / count,
                "compile_s": t.compile_s,
            }
        )
    record = case_record(
        3,
        f"Restarts: {restarts} restarts of Adam on Rosenbrock, {steps} steps",
        rows,
        targets=[
            target(
                "per restart: jitted-run loop / multistart >= 10",
                per_scan / per_multi,
                10.0,
                at_most=False,
            ),
            target(
                "multistart / jitted vmap of lax.scan <= 1.15",
                multi_t.median_s / vmap_t.median_s,
                1.15,
                at_most=True,
            ),
        ],
        notes=(
            "The loops run a subset of the same starts and are scaled per restart. "
            "The time curve is jd.multistart alone, one compiled program per restart count. "
            "The jitted vmap of lax.scan (the same starts, optax.adam) records each restart's "
            "losses (the second vmap row also their gradient norms, as jd.multistart does); "
            "jd.multistart also checks each restart's step (finite, tol, budget) so that "
            "restarts can end at different steps. "
            + (
                "torch not installed: the torch.optim.Adam row is skipped."
                if torch_run is None
                else "torch.optim.Adam runs all restarts as one (restarts, 2) tensor with the "
                "summed loss (Adam is elementwise, so each restart is its own run), built "
                "afresh in every call."
            )
        ),
        params={
            "restarts": restarts,
            "steps": steps,
            "loop_subset": loop_subset,
            "learning_rate": LEARNING_RATE,
        },
    )
    record["curve"] = curve_rows
    return record
