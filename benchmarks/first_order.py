"""Cases 1, 2 and 7: Adam runs with ``jd.fit`` against hand-written loops and PyTorch.

Every competitor minimises the same loss from the same start with the same Adam
hyperparameters (``b1=0.9, b2=0.999, eps=1e-8``), full batch, a fixed number of steps.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdescent as jd
from benchmarks.common import (
    Size,
    block,
    case_record,
    compile_clock,
    entry,
    fresh_value,
    measure,
    measure_fresh,
    target,
)

LEARNING_RATE = 1e-3


# --- problems -----------------------------------------------------------------------------


def mlp_problem(n: int = 512, sizes=(8, 64, 64, 1), seed: int = 0):
    """Regression data ``y = sin(sum x) + noise`` and a tanh MLP's initial parameters."""
    kx, kn, kp = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, sizes[0]), jnp.float32)
    y = jnp.sin(jnp.sum(x, axis=1, keepdims=True)) + 0.1 * jax.random.normal(kn, (n, 1))
    keys = jax.random.split(kp, len(sizes) - 1)
    params = [
        {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]
    return params, (x, y)


def mlp_loss(params, batch):
    """Mean squared error of a tanh MLP."""
    x, y = batch
    h = x
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"][None, :]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return jnp.mean(jnp.square(h - y))


def logistic_problem(n: int = 256, d: int = 10, seed: int = 1):
    kx, kw, ku = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d,))
    y = (jax.random.uniform(ku, (n,)) < jax.nn.sigmoid(x @ w)).astype(jnp.float32)
    return {"w": jnp.zeros((d,)), "b": jnp.zeros(())}, (x, y)


def logistic_loss(params, batch):
    """Mean Bernoulli negative log-likelihood of a linear logit."""
    x, y = batch
    z = x @ params["w"] + params["b"]
    return jnp.mean(jax.nn.softplus(z) - y * z)


# --- competitors --------------------------------------------------------------------------


def scan_runner(loss, steps: int, learning_rate: float = LEARNING_RATE):
    """A hand-written ``lax.scan`` over ``optax.adam`` steps, jitted whole."""
    opt = optax.adam(learning_rate)

    @jax.jit
    def run(params, data):
        def body(carry, _):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p, data)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (p, _), values = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return p, values

    return run


def python_loop_runner(loss, steps: int, learning_rate: float = LEARNING_RATE):
    """The usual optax loop: a jitted step called from Python (losses kept, no host sync)."""
    opt = optax.adam(learning_rate)

    @jax.jit
    def step(p, s, data):
        value, grads = jax.value_and_grad(loss)(p, data)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    def run(params, data):
        p, s = params, opt.init(params)
        values = []
        for _ in range(steps):
            p, s, value = step(p, s, data)
            values.append(value)  # kept on device: no host sync per step
        return p, values

    return run


def fit_runner(loss, steps: int):
    """``jd.fit`` with ``jd.optim.adam``, built once so repeated calls reuse the program."""
    opt = jd.optim.adam(LEARNING_RATE)

    def run(params, data):
        return jd.fit(loss, params, opt, data=data, steps=steps)

    return run


def torch_mlp_runner(params, data, steps: int):
    """``torch.optim.Adam`` on the same MLP and data on CPU, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.from_numpy(np.array(data[0]))
    y = torch.from_numpy(np.array(data[1]))
    init = [{k: torch.from_numpy(np.array(v)) for k, v in layer.items()} for layer in params]

    def run():
        ps = [{k: v.clone().requires_grad_(True) for k, v in layer.items()} for layer in init]
        flat = [t for layer in ps for t in (layer["w"], layer["b"])]
        opt = torch.optim.Adam(flat, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
        losses = torch.empty(steps)
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            h = x
            for j, layer in enumerate(ps):
                h = h @ layer["w"] + layer["b"]
                if j < len(ps) - 1:
                    h = torch.tanh(h)
            value = torch.mean((h - y) ** 2)
            value.backward()
            opt.step()
            losses[i] = value.detach()
        return [[p.detach().numpy() for p in (layer["w"], layer["b"])] for layer in ps], losses

    return run, torch.__version__, torch.get_num_threads()


def torch_logistic_runner(params, data, steps: int):
    """``torch.optim.Adam`` on the same logistic regression on CPU, or None without torch.
    The loss is ``mean(softplus(z) - y z)`` for ``z = x w + b``, as :func:`logistic_loss`."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.from_numpy(np.array(data[0]))
    y = torch.from_numpy(np.array(data[1]))
    w0 = torch.from_numpy(np.array(params["w"]))
    b0 = torch.from_numpy(np.array(params["b"]))

    def run():
        w = w0.clone().requires_grad_(True)
        b = b0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w, b], lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
        losses = torch.empty(steps)
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            z = x @ w + b
            value = torch.mean(torch.nn.functional.softplus(z) - y * z)
            value.backward()
            opt.step()
            losses[i] = value.detach()
        return {"w": w.detach().numpy(), "b": b.detach().numpy()}, losses

    return run, torch.__version__, torch.get_num_threads()


def _final_loss(loss, params, data) -> float:
    return float(loss(params, data))


def torch_row(torch_run, loss, data, to_tree, fit_t, repeats: int, **extra):
    """The ``torch.optim.Adam`` row of a case, from a ``torch_*_runner`` result (``None``
    without torch: a skipped row): ``(row, timing or None, note)``. ``to_tree`` turns the
    runner's final params into the JAX loss's params; ``extra(timing)`` callables add
    figures computed from the timing."""
    if torch_run is None:
        row = entry("torch.optim.Adam (CPU)", None, skipped="torch not installed")
        return row, None, "torch not installed: the torch.optim.Adam row is skipped."
    run_torch, torch_version, threads = torch_run
    torch_t = measure(run_torch, repeats)
    final = _final_loss(loss, jax.tree.map(jnp.asarray, to_tree(torch_t.result[0])), data)
    row = entry(
        "torch.optim.Adam (CPU)",
        torch_t,
        final_loss=final,
        ratio_this_over_fit=torch_t.median_s / fit_t.median_s,
        **{k: f(torch_t) for k, f in extra.items()},
        torch=torch_version,
        torch_threads=threads,
    )
    note = (
        "torch.optim.Adam is built afresh in every call (PyTorch compiles nothing), so its "
        "row is also its fresh-optimizer row."
    )
    return row, torch_t, note


def fresh_rows(loss, params, data, steps: int, repeats: int, fit_t) -> list[dict]:
    """Rows for a fresh optimizer per call, as a Python sweep over learning rates makes one
    (call ``i`` uses :func:`benchmarks.common.fresh_value`): ``jd.fit`` with a new
    ``jd.optim.adam(lr)`` (a new value: the compiled loop is reused), ``jd.fit`` with a new
    but equal ``optax.adam`` (reused too, after one untimed call that compiles its
    configuration), and the hand-written scan and optax Python loop,
    each jitted over a closure that holds the new ``optax.adam(lr)`` (compiled again each
    call). ``ratio_this_over_fit`` is against ``fit_t``, the warm ``jd.fit``."""

    def jd_fresh(i):
        opt = jd.optim.adam(fresh_value(LEARNING_RATE, i))
        return jd.fit(loss, params, opt, data=data, steps=steps)

    def jd_equal_optax(i):
        return jd.fit(loss, params, optax.adam(LEARNING_RATE), data=data, steps=steps)

    def scan_fresh(i):
        return scan_runner(loss, steps, fresh_value(LEARNING_RATE, i))(params, data)

    def loop_fresh(i):
        return python_loop_runner(loss, steps, fresh_value(LEARNING_RATE, i))(params, data)

    # the first call of an equal optax.adam compiles (a new configuration, not jd's adam), so
    # it is made once untimed: the row shows the calls after it, each with a new object
    jd_equal_optax(-1)
    rows = []
    for name, call, count in (
        ("jd.fit, a fresh jd.optim.adam(lr) per call", jd_fresh, repeats),
        ("jd.fit, a fresh equal optax.adam per call", jd_equal_optax, repeats),
        ("lax.scan, a fresh optax.adam(lr) per call", scan_fresh, max(1, repeats // 2)),
        ("optax Python loop, a fresh optax.adam(lr) per call", loop_fresh, max(1, repeats // 2)),
    ):
        t = measure_fresh(call, count)
        rows.append(entry(name, t, ratio_this_over_fit=t.median_s / fit_t.median_s))
    return rows


# --- cases --------------------------------------------------------------------------------


def case1(size: Size) -> dict:
    """Small MLP, Adam, full batch: fit vs lax.scan vs Python loop vs torch."""
    steps = size.pick(2_000, 2_000, 20)
    n = size.pick(512, 512, 32)
    params, data = mlp_problem(n)
    r = size.repeats
    run_fit = fit_runner(mlp_loss, steps)
    fit_t = measure(lambda: run_fit(params, data), r)
    run_scan = scan_runner(mlp_loss, steps)
    scan_t = measure(lambda: run_scan(params, data), r)
    run_loop = python_loop_runner(mlp_loss, steps)
    loop_t = measure(lambda: run_loop(params, data), max(1, r // 2) if size.full else r)
    rows = [
        entry("jd.fit (jd.optim.adam)", fit_t, final_loss=float(fit_t.result.final_loss)),
        entry(
            "lax.scan over optax.adam",
            scan_t,
            final_loss=_final_loss(mlp_loss, scan_t.result[0], data),
            ratio_fit_over_this=fit_t.median_s / scan_t.median_s,
        ),
        entry(
            "optax Python loop (jitted step)",
            loop_t,
            final_loss=_final_loss(mlp_loss, loop_t.result[0], data),
            ratio_this_over_fit=loop_t.median_s / fit_t.median_s,
        ),
    ]
    targets = [
        target(
            "fit / lax.scan <= 1.05",
            fit_t.median_s / scan_t.median_s,
            1.05,
            at_most=True,
        )
    ]
    repeats = max(1, r // 2) if size.full else r
    row, torch_t, notes = torch_row(
        torch_mlp_runner(params, data, steps), mlp_loss, data, _torch_to_tree, fit_t, repeats
    )
    rows.append(row)
    if torch_t is not None:
        targets.append(
            target("torch / fit >= 3", torch_t.median_s / fit_t.median_s, 3.0, at_most=False)
        )
    rows += fresh_rows(mlp_loss, params, data, steps, r, fit_t)
    return case_record(
        1,
        f"Small MLP ({n} x 8 -> 64 -> 64 -> 1, MSE, Adam, {steps} full-batch steps)",
        rows,
        targets=targets,
        notes=notes,
        params={"n": n, "steps": steps, "learning_rate": LEARNING_RATE},
    )


def _torch_to_tree(layers):
    return [{"w": w, "b": b} for w, b in layers]


def case2(size: Size) -> dict:
    """Tiny logistic regression, Adam: fit vs the optax Python loop (dispatch-bound)."""
    steps = size.pick(5_000, 5_000, 20)
    params, data = logistic_problem()
    r = size.repeats
    run_fit = fit_runner(logistic_loss, steps)
    fit_t = measure(lambda: run_fit(params, data), r)
    run_scan = scan_runner(logistic_loss, steps)
    scan_t = measure(lambda: run_scan(params, data), r)
    run_loop = python_loop_runner(logistic_loss, steps)
    loop_t = measure(lambda: run_loop(params, data), r)
    ratio = loop_t.median_s / fit_t.median_s
    rows = [
        entry("jd.fit (jd.optim.adam)", fit_t, final_loss=float(fit_t.result.final_loss)),
        entry(
            "lax.scan over optax.adam",
            scan_t,
            final_loss=_final_loss(logistic_loss, scan_t.result[0], data),
            ratio_this_over_fit=scan_t.median_s / fit_t.median_s,
        ),
        entry(
            "optax Python loop (jitted step)",
            loop_t,
            final_loss=_final_loss(logistic_loss, loop_t.result[0], data),
            ratio_this_over_fit=ratio,
            per_step_us=1e6 * loop_t.median_s / steps,
        ),
    ]
    row, _, notes = torch_row(
        torch_logistic_runner(params, data, steps),
        logistic_loss,
        data,
        lambda p: p,
        fit_t,
        max(1, r // 2) if size.full else r,
        per_step_us=lambda t: 1e6 * t.median_s / steps,
    )
    rows.append(row)
    rows += fresh_rows(logistic_loss, params, data, steps, r, fit_t)
    targets = [
        target("Python loop / fit >= 7", ratio, 7.0, at_most=False),
        target("Python loop / fit >= 10 (stretch)", ratio, 10.0, at_most=False),
    ]
    return case_record(
        2,
        f"Tiny logistic regression (n = 256, d = 10, Adam, {steps} steps)",
        rows,
        targets=targets,
        notes=notes,
        params={"n": 256, "d": 10, "steps": steps, "learning_rate": LEARNING_RATE},
    )


def case7(size: Size) -> dict:
    """Compile time of ``fit`` for case 1 (``jd.clear_cache()`` first, so nothing is cached:
    ``fit`` reuses its program for a fresh but equal loss)."""
    steps = size.pick(2_000, 2_000, 20)
    n = size.pick(512, 512, 32)
    params, data = mlp_problem(n)
    repeats = size.pick(5, 3, 1)

    def fresh_loss():
        # a new function object: a miss in jax.jit's cache; fit keys a program by what it
        # reads (an equal fresh lambda reuses it), so its cache is cleared first
        jd.clear_cache()
        return lambda p, b: mlp_loss(p, b)

    def timed(make_run):
        compile_s, first_s = [], []
        for _ in range(repeats):
            run = make_run()
            with compile_clock() as compiled:
                t0 = time.perf_counter()
                block(run(params, data))
                first_s.append(time.perf_counter() - t0)
                compile_s.append(compiled())
        return float(np.median(compile_s)), float(np.median(first_s)), compile_s

    fit_c, fit_first, fit_all = timed(lambda: fit_runner(fresh_loss(), steps))
    scan_c, scan_first, scan_all = timed(lambda: scan_runner(fresh_loss(), steps))
    rows = [
        entry(
            "jd.fit (jd.optim.adam)",
            None,
            compile_s=fit_c,
            compile_runs_s=fit_all,
            first_call_s=fit_first,
        ),
        entry(
            "lax.scan over optax.adam",
            None,
            compile_s=scan_c,
            compile_runs_s=scan_all,
            first_call_s=scan_first,
            ratio_fit_over_this=fit_c / scan_c if scan_c else float("nan"),
        ),
    ]
    return case_record(
        7,
        "Compile time of fit for case 1 (trace + lower + XLA compile, median)",
        rows,
        notes=(
            "compile_s sums JAX's jaxpr-trace, MLIR-lowering and backend-compile events during "
            "a first call with a fresh loss function (after jd.clear_cache() for fit, which "
            "would reuse its program for an equal loss); first_call_s is that whole call."
        ),
        params={"steps": steps, "repeats": repeats},
    )
