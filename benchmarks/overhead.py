"""Issue 11's loop-overhead measurements, side by side in one process.

    python -m benchmarks.overhead fresh       # fresh optimizers per call; Newton vs SciPy
    python -m benchmarks.overhead logreg      # fit / hand lax.scan, logistic regression
    python -m benchmarks.overhead mlp         # fit / hand lax.scan, MLP 512x8-64-64-1
    python -m benchmarks.overhead multistart  # multistart / hand vmapped scan, 1024 restarts
    python -m benchmarks.overhead multistart_tol  # 1024 restarts that end one after another
    python -m benchmarks.overhead first_fit   # first call in a fresh process (run each in a
    python -m benchmarks.overhead first_hand  # new process and compare the two)
    python -m benchmarks.overhead anatomy     # where multistart's per-step cost goes

Warm medians; the ratios, not the times, are what carries over between machines.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdescent as jd
from benchmarks.common import measure


def timeit(fn, r=5):
    """Warm median of ``r`` calls after a warm-up call (:func:`benchmarks.common.measure`)."""
    return measure(fn, r).median_s


def scan_steps(loss, opt, p, steps, *args):
    """``steps`` optax steps from ``p`` as one ``lax.scan`` (the hand-written loop):
    ``(final params, losses)``."""

    def body(c, _):
        p, s = c
        v, g = jax.value_and_grad(loss)(p, *args)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), v

    (p, _s), vs = jax.lax.scan(body, (p, opt.init(p)), length=steps)
    return p, vs


def hand_fit(loss, p0, opt, data, steps):
    run = jax.jit(lambda p, data: scan_steps(loss, opt, p, steps, data))
    return lambda: run(p0, data)


def mlp_case():
    """The MLP case: ``(loss, params, optimizer, data)``, the data on the device."""
    x = jax.random.normal(jax.random.key(0), (512, 8))
    y = jnp.sin(x).sum(1)
    m = jd.models.mlp([8, 64, 64, 1])
    loss = jd.losses.nll(m.apply, jd.likelihoods.Gaussian())
    p0 = m.init(jax.random.key(1))
    return loss, p0, jd.optim.adam(1e-3), jax.block_until_ready((x, y))


def main(case: str) -> None:
    if case == "anatomy":
        anatomy()
    elif case == "multistart_tol":
        multistart_tol()
    elif case == "fresh":
        f = jd.problems.rosenbrock
        x0 = jnp.array([-1.2, 1.0])
        jd.fit(f, x0, jd.optim.adam(1e-3), steps=2000)
        warm = timeit(lambda: jd.fit(f, x0, jd.optim.adam(1e-3), steps=2000).params)
        ts = []
        for i in range(5):
            t = time.perf_counter()
            jax.block_until_ready(jd.fit(f, x0, jd.optim.adam(1e-3 * (i + 2)), steps=2000).params)
            ts.append(time.perf_counter() - t)
        ts2 = []
        for _ in range(5):
            t = time.perf_counter()
            jax.block_until_ready(jd.fit(f, x0, optax.adam(3e-3), steps=2000).params)
            ts2.append(time.perf_counter() - t)
        print(
            f"fresh jd.adam per call {statistics.median(ts) * 1e3:.2f} ms, fresh optax.adam {statistics.median(ts2[1:]) * 1e3:.2f} ms, warm same object {warm * 1e3:.2f} ms"
        )
        # newton logistic regression n=20000 d=100 vs scipy
        key = jax.random.key(0)
        x = jax.random.normal(key, (20000, 100))
        w = jax.random.normal(jax.random.key(1), (100,)) * 0.1
        y = (jax.random.uniform(jax.random.key(2), (20000,)) < jax.nn.sigmoid(x @ w)).astype(
            jnp.float32
        )
        loss = jd.losses.nll(lambda p, x: x @ p, jd.likelihoods.Bernoulli())
        jd.fit(
            loss,
            jnp.zeros(100),
            jd.optim.newton(line_search=True),
            data=(x, y),
            steps=20,
            tol=1e-5,
        )
        ts = []
        for i in range(3):
            t = time.perf_counter()
            r = jd.fit(
                loss,
                jnp.zeros(100),
                jd.optim.newton(damping=1e-4 * (i + 1), line_search=True),
                data=(x, y),
                steps=20,
                tol=1e-5,
            )
            jax.block_until_ready(r.params)
            ts.append(time.perf_counter() - t)
        from scipy.optimize import minimize

        X = np.asarray(x, np.float64)
        Y = np.asarray(y, np.float64)

        def fun(w):
            z = X @ w
            return np.mean(np.logaddexp(0, z) - Y * z)

        def grad(w):
            p = 1 / (1 + np.exp(-X @ w))
            return X.T @ (p - Y) / len(Y)

        def hess(w):
            p = 1 / (1 + np.exp(-X @ w))
            return (X * (p * (1 - p))[:, None]).T @ X / len(Y)

        t = time.perf_counter()
        minimize(fun, np.zeros(100), jac=grad, hess=hess, method="Newton-CG", tol=1e-8)
        ts_sc = time.perf_counter() - t
        print(
            f"newton logreg fresh rule per call {statistics.median(ts):.3f} s ({r.steps_taken} steps), scipy Newton-CG {ts_sc:.3f} s"
        )
    elif case == "logreg":
        x = jax.random.normal(jax.random.key(0), (256, 10))
        y = (x[:, 0] > 0).astype(jnp.float32)
        loss = jd.losses.nll(lambda p, x: x @ p["w"] + p["b"], jd.likelihoods.Bernoulli())
        p0 = {"w": jnp.zeros(10), "b": jnp.zeros(())}
        opt = jd.optim.adam(1e-2)
        a = timeit(lambda: jd.fit(loss, p0, opt, data=(x, y), steps=5000).params)
        b = timeit(hand_fit(loss, p0, opt, (x, y), 5000))
        c = timeit(
            lambda: jd.fit(loss, p0, opt, data=(x, y), steps=5000, record_every=None).params
        )
        print(
            f"logreg fit {a * 1e3:.1f} ms, hand scan {b * 1e3:.1f} ms, ratio {a / b:.2f}; no history {c / b:.2f}"
        )
    elif case == "mlp":
        loss, p0, opt, (x, y) = mlp_case()
        a = timeit(lambda: jd.fit(loss, p0, opt, data=(x, y), steps=2000).params, 3)
        b = timeit(hand_fit(loss, p0, opt, (x, y), 2000), 3)
        print(f"mlp fit {a * 1e3:.1f} ms, hand scan {b * 1e3:.1f} ms, ratio {a / b:.2f}")
    elif case in ("first_fit", "first_hand"):
        loss, p0, opt, (x, y) = mlp_case()
        jax.block_until_ready(p0)
        t = time.perf_counter()
        if case == "first_fit":
            jax.block_until_ready(jd.fit(loss, p0, opt, data=(x, y), steps=2000).params)
        else:
            jax.block_until_ready(hand_fit(loss, p0, opt, (x, y), 2000)())
        print(case, f"{time.perf_counter() - t:.3f}")
    elif case == "multistart":
        f = jd.problems.rosenbrock
        opt = jd.optim.adam(1e-3)

        def init(k):
            return jax.random.uniform(k, (2,), minval=-2, maxval=2)

        key = jax.random.key(0)
        a = timeit(
            lambda: jd.multistart(init, f, opt, key=key, restarts=1024, steps=1000).params, 3
        )
        keys = jax.random.split(key, 1024)

        @jax.jit
        def hand(keys):
            return jax.vmap(lambda k: scan_steps(f, opt, init(k), 1000))(keys)

        b = timeit(lambda: hand(keys), 3)
        print(
            f"multistart {a * 1e3:.1f} ms, hand vmapped scan {b * 1e3:.1f} ms, ratio {a / b:.2f}"
        )


def multistart_tol() -> None:
    """1,024 Rosenbrock restarts of Adam (lr 1e-2) with ``tol=1e-2`` over 3,000 steps: the
    restarts converge at many different steps, so the loop meets many steps at which some
    restart ends (the per-run checks are taken there)."""
    f = jd.problems.rosenbrock
    opt = jd.optim.adam(1e-2)

    def init(k):
        return jax.random.uniform(k, (2,), minval=-2, maxval=2)

    key = jax.random.key(0)

    def run():
        return jd.multistart(init, f, opt, key=key, restarts=1024, steps=3000, tol=1e-2)

    ends = len(set(np.asarray(run().steps_taken).tolist()))
    print(f"multistart with tol: {timeit(lambda: run().params) * 1e3:.1f} ms ({ends} end steps)")


def anatomy() -> None:
    """Where multistart's per-step cost goes: the bare vmapped loop, then the bookkeeping.

    1,024 Rosenbrock restarts x 1,000 Adam steps, restarts on the last axis (as in the
    engine), each variant a stand-alone jitted ``while_loop`` that writes a loss history:
    ``bare`` (the step only), ``+prev`` (keeps the previous params and state for a roll-back),
    ``+check`` (per-run finiteness and tolerance into a status vector), then freezing runs
    that have ended, either ``+freeze cond`` (the engine's all-accepted ``lax.cond``, whose
    branches return the whole carry) or ``+freeze select`` (a per-run select of every leaf).
    """
    f = jd.problems.rosenbrock
    opt = jd.optim.adam(1e-3)
    x0 = jax.random.uniform(jax.random.key(0), (1024, 2), minval=-2, maxval=2)

    def step(p, s):
        v, g = jax.value_and_grad(f)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, v, jnp.sqrt(jnp.sum(g**2))

    vstep = jax.vmap(step, in_axes=(-1, -1), out_axes=-1)

    def variant(prev=False, check=False, freeze=None):
        def pick(ok, a, b):
            return jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)

        @jax.jit
        def run(x0):
            p = x0.T
            s = jax.vmap(opt.init, in_axes=-1, out_axes=-1)(p)
            start = (p, s, p, s, jnp.zeros(1024, jnp.int32), 0, jnp.zeros((1000, 1024)))

            def body(c):
                p, s, pp, ps, status, i, h = c
                new_p, new_s, v, n = vstep(p, s)
                keep_p, keep_s = (p, s) if prev else (pp, ps)
                if check:
                    ok = jnp.isfinite(v) & jnp.isfinite(n) & (n >= 0.0) & (status == 0)
                    if freeze == "cond":
                        new_p, new_s, keep_p, keep_s = jax.lax.cond(
                            jnp.all(ok),
                            lambda: (new_p, new_s, keep_p, keep_s),
                            lambda: (pick(ok, new_p, p), pick(ok, new_s, s),
                                     pick(ok, p, pp), pick(ok, s, ps)),
                        )  # fmt: skip
                    elif freeze == "select":
                        new_p, new_s = pick(ok, new_p, p), pick(ok, new_s, s)
                        keep_p, keep_s = pick(ok, p, pp), pick(ok, s, ps)
                    status = jnp.where(ok, status, 3)
                return new_p, new_s, keep_p, keep_s, status, i + 1, h.at[i].set(v)

            return jax.lax.while_loop(lambda c: (c[5] < 1000) & jnp.any(c[4] == 0), body, start)

        return lambda: run(x0)

    rows = [
        ("bare", variant()),
        ("+prev", variant(prev=True)),
        ("+prev +check", variant(prev=True, check=True)),
        ("+prev +check +freeze cond", variant(prev=True, check=True, freeze="cond")),
        ("+prev +check +freeze select", variant(prev=True, check=True, freeze="select")),
    ]
    for name, fn in rows:
        print(f"{name:30s} {timeit(fn) * 1e3:6.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1])
