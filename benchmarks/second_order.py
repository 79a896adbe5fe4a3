"""Cases 4, 5 and 6: second-order rules on GLMs against hand-written JAX and the peers,
Rosenbrock, and Newton-CG scaling.

Cases 4 and 5 run in float64 (``jax.enable_x64(True)`` inside the case); case 4's large
row (full size only) in float32.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdescent as jd
from benchmarks.common import (
    Size,
    Timing,
    block,
    case_record,
    compile_clock,
    entry,
    measure,
    measure_fresh,
    missing_peers,
    needs,
    target,
)
from jaxdescent._engine import core as _core
from jaxdescent._engine import programs as _programs

# --- case 4: GLMs (logistic and Poisson regression) by Fisher scoring and Newton ------------
#
# Each size is one group of rows, all in one process with the timed calls interleaved
# (method by method, round after round), so that the ratios compare like with like on a
# busy machine. Two floors written by hand in JAX beside the peers: IRLS (X^T W X and a
# Cholesky solve per iteration, jitted) and Newton with jax.hessian and a Cholesky solve.

GLM_TOL = 1e-8
GLM_STEPS = 50


def _glm_data(family: str, n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    eta = x @ (rng.standard_normal(d) / np.sqrt(d)) + 0.3
    if family == "logistic":
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
    else:
        y = rng.poisson(np.exp(0.5 * eta)).astype(np.float64)
    return x, y


def _linear(params, x):
    return x @ params["w"] + params["b"]


def _plain_loss(family: str):
    """The mean negative log-likelihood (less constants) as a plain closure ``loss(params,
    batch)``: what a user writes without ``jd.losses.nll``."""

    def loss(params, batch):
        x, y = batch
        z = x @ params["w"] + params["b"]
        if family == "logistic":
            return jnp.mean(jax.nn.softplus(z) - y * z)
        return jnp.mean(jnp.exp(z) - y * z)

    return loss


def _mean_and_weight(family: str, z):
    if family == "logistic":
        m = jax.nn.sigmoid(z)
        return m, m * (1.0 - m)
    m = jnp.exp(z)
    return m, m


def _hand_irls(family: str):
    """IRLS as one writes it in JAX: on ``X`` with a column of ones, ``X^T W X`` and a
    Cholesky solve per iteration, to gradient norm ``GLM_TOL``; jitted."""

    @jax.jit
    def irls(xa, y):
        n = xa.shape[0]

        def grad(theta):
            m, _ = _mean_and_weight(family, xa @ theta)
            return xa.T @ (m - y) / n

        def body(carry):
            theta, g, i = carry
            _, w = _mean_and_weight(family, xa @ theta)
            h = (xa * w[:, None]).T @ xa / n
            theta = theta - jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), g)
            return theta, grad(theta), i + 1

        def cond(carry):
            return (jnp.linalg.norm(carry[1]) > GLM_TOL) & (carry[2] < GLM_STEPS)

        theta0 = jnp.zeros(xa.shape[1])
        return jax.lax.while_loop(cond, body, (theta0, grad(theta0), 0))

    return irls


def _hand_hessian_newton(family: str):
    """Newton with ``jax.hessian`` of the plain loss and a Cholesky solve, no safeguard;
    jitted (the floor for ``jd.optim.newton`` on a closure)."""
    loss = _plain_loss(family)

    @jax.jit
    def newton(x, y):
        def f(theta):
            return loss({"w": theta[1:], "b": theta[0]}, (x, y))

        def body(carry):
            theta, g, i = carry
            h = jax.hessian(f)(theta)
            theta = theta - jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), g)
            return theta, jax.grad(f)(theta), i + 1

        def cond(carry):
            return (jnp.linalg.norm(carry[1]) > GLM_TOL) & (carry[2] < GLM_STEPS)

        theta0 = jnp.zeros(x.shape[1] + 1)
        return jax.lax.while_loop(cond, body, (theta0, jax.grad(f)(theta0), 0))

    return newton


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """Time each call: a warm-up (its wall time and JAX compile time recorded), then
    ``repeats`` rounds, each round calling every method once in turn; the median of a
    method's rounds is its figure. Interleaving spreads a busy machine's noise over all
    methods alike; Python's garbage is collected before each timed call."""
    first, compiles, results = {}, {}, {}
    for name, call in calls.items():
        with compile_clock() as compiled:
            t0 = time.perf_counter()
            results[name] = block(call())
            first[name] = time.perf_counter() - t0
            compiles[name] = compiled()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, repeats)):
        for name, call in calls.items():
            # the garbage of the call before (statsmodels' data frames, scikit-learn's copies)
            # is collected here, not charged to whichever call the collector next runs in
            gc.collect()
            t0 = time.perf_counter()
            results[name] = block(call())
            runs[name].append(time.perf_counter() - t0)
    return {
        name: Timing(
            statistics.median(runs[name]), runs[name], first[name], compiles[name], results[name]
        )
        for name in calls
    }


def _glm_group(family: str, n: int, d: int, repeats: int) -> tuple[list[dict], dict]:
    """The rows of one GLM size, and the ratios its targets read."""
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression, PoissonRegressor

    x_np, y_np = _glm_data(family, n, d)
    fun, grad, hess = _np_glm(family, x_np, y_np)
    label = f"{family} {n:,} x {d}"
    with jax.enable_x64(True):
        x, y = jnp.asarray(x_np), jnp.asarray(y_np)
        xa = jnp.concatenate([jnp.ones((n, 1)), x], axis=1)
        likelihood = (
            jd.likelihoods.Bernoulli() if family == "logistic" else jd.likelihoods.Poisson()
        )
        nll = jd.losses.nll(_linear, likelihood)
        plain = _plain_loss(family)
        p0 = {"w": jnp.zeros(d), "b": jnp.zeros(())}
        irls, hess_newton = _hand_irls(family), _hand_hessian_newton(family)
        gn, newton = jd.optim.gauss_newton(), jd.optim.newton()

        def fit(loss, rule):
            return jd.fit(loss, p0, rule, data=(x, y), steps=GLM_STEPS, tol=GLM_TOL)

        def sklearn():
            if family == "logistic":
                model = LogisticRegression(
                    C=np.inf, solver="newton-cholesky", tol=GLM_TOL, max_iter=GLM_STEPS
                )
            else:
                model = PoissonRegressor(
                    alpha=0.0, solver="newton-cholesky", tol=GLM_TOL, max_iter=GLM_STEPS
                )
            return model.fit(x_np, y_np)

        calls = {
            "jd gauss_newton()": lambda: fit(nll, gn),
            "jd newton(), nll loss": lambda: fit(nll, newton),
            "jd newton(), plain closure": lambda: fit(plain, newton),
            "hand-written IRLS (jit)": lambda: irls(xa, y),
            "hand-written jax.hessian + Cholesky Newton (jit)": lambda: hess_newton(x, y),
            "sklearn newton-cholesky": sklearn,
            "scipy Newton-CG (exact Hessian)": lambda: minimize(
                fun,
                np.zeros(d + 1),
                method="Newton-CG",
                jac=grad,
                hess=hess,
                options={"xtol": 1e-14, "maxiter": 200},
            ),
        }
        if missing_peers("statsmodels") is None:
            import statsmodels.api as sm

            fam = sm.families.Binomial() if family == "logistic" else sm.families.Poisson()
            calls["statsmodels GLM (IRLS)"] = lambda: sm.GLM(
                y_np, sm.add_constant(x_np), family=fam
            ).fit(tol=GLM_TOL, maxiter=GLM_STEPS)
        timings = interleaved(calls, repeats)
        # a fresh (equal) rule in every call, as a rule built inline in a loop is
        fresh = measure_fresh(lambda i: fit(nll, jd.optim.gauss_newton()), min(repeats, 3))

    def coefficients(name, result):
        if name.startswith("jd"):
            return np.concatenate([[float(result.params["b"])], np.asarray(result.params["w"])])
        if name.startswith("hand"):
            return np.asarray(result[0])
        if name.startswith("sklearn"):
            return np.concatenate([np.ravel(result.intercept_), np.ravel(result.coef_)])
        if name.startswith("scipy"):
            return np.concatenate([[result.x[-1]], result.x[:-1]])
        return np.asarray(result.params)

    coefs = {name: coefficients(name, t.result) for name, t in timings.items()}
    ref_sk = coefs["sklearn newton-cholesky"]
    ref_sm = coefs.get("statsmodels GLM (IRLS)")
    base = timings["hand-written IRLS (jit)"]
    rows = []
    for name, t in timings.items():
        extra = {
            "size": label,
            "ratio_to_irls": t.median_s / base.median_s,
            "first_call_ratio_to_irls": t.first_call_s / base.first_call_s,
            "max_coef_diff_vs_sklearn": float(np.max(np.abs(coefs[name] - ref_sk))),
        }
        if ref_sm is not None:
            extra["max_coef_diff_vs_statsmodels"] = float(np.max(np.abs(coefs[name] - ref_sm)))
        if name.startswith("jd"):
            extra["iterations"] = int(t.result.steps_taken)
            extra["status"] = jd.Status(int(t.result.status)).name
        rows.append(entry(f"{name} [{label}]", t, **extra))
    rows.append(
        entry(
            f"jd.fit + a fresh jd.optim.gauss_newton() per call [{label}]",
            fresh,
            size=label,
            ratio_to_irls=fresh.median_s / base.median_s,
        )
    )
    gn_t = timings["jd gauss_newton()"]
    ratios = {
        "gn_over_irls": gn_t.median_s / base.median_s,
        "gn_over_sklearn": gn_t.median_s / timings["sklearn newton-cholesky"].median_s,
        "gn_first_over_irls_first": gn_t.first_call_s / base.first_call_s,
        "newton_plain_over_hessian": timings["jd newton(), plain closure"].median_s
        / timings["hand-written jax.hessian + Cholesky Newton (jit)"].median_s,
        "gn_coef_diff": max(
            float(np.max(np.abs(coefs["jd gauss_newton()"] - ref_sk))),
            0.0 if ref_sm is None else float(np.max(np.abs(coefs["jd gauss_newton()"] - ref_sm))),
        ),
    }
    if "statsmodels GLM (IRLS)" in timings:
        ratios["statsmodels_over_gn"] = timings["statsmodels GLM (IRLS)"].median_s / gn_t.median_s
    return rows, ratios


def _np_glm(family: str, x: np.ndarray, y: np.ndarray):
    """The plain loss, its gradient and Hessian in NumPy on ``theta = (w, b)`` (SciPy's)."""
    n = x.shape[0]
    xa = np.hstack([x, np.ones((n, 1))])

    def mean_weight(theta):
        z = xa @ theta
        if family == "logistic":
            m = 1.0 / (1.0 + np.exp(-z))
            return z, m, m * (1 - m)
        m = np.exp(z)
        return z, m, m

    def fun(theta):
        z, m, _ = mean_weight(theta)
        loss = np.logaddexp(0.0, z) - y * z if family == "logistic" else m - y * z
        return float(np.mean(loss))

    def grad(theta):
        _, m, _ = mean_weight(theta)
        return xa.T @ (m - y) / n

    def hess(theta):
        _, _, w = mean_weight(theta)
        return (xa.T * w) @ xa / n

    return fun, grad, hess


GLM_SIZES = [
    ("logistic", 20_000, 100),
    ("logistic", 200_000, 20),
    ("logistic", 5_000, 400),
    ("poisson", 100_000, 30),
]


@needs("scipy", "sklearn")
def case4(size: Size) -> dict:
    """GLMs by Fisher scoring and Newton, against hand-written JAX, scikit-learn, statsmodels
    and SciPy."""
    groups = size.pick(
        GLM_SIZES, GLM_SIZES[:2] + GLM_SIZES[3:], [("logistic", 300, 5), ("poisson", 300, 4)]
    )
    repeats = size.pick(7, 3, 1)
    rows, targets = [], []
    for family, n, d in groups:
        group_rows, r = _glm_group(family, n, d, repeats)
        rows += group_rows
        label = f"{family} {n:,} x {d}"
        targets.append(
            target(
                f"{label}: gauss_newton / hand IRLS <= 1.15 (warm)",
                r["gn_over_irls"],
                1.15,
                at_most=True,
            )
        )
        targets.append(
            target(
                f"{label}: gauss_newton first call / IRLS first call <= 2",
                r["gn_first_over_irls_first"],
                2.0,
                at_most=True,
            )
        )
        targets.append(
            target(
                f"{label}: coefficients = sklearn's and statsmodels' to 1e-6",
                max(r["gn_coef_diff"], 1e-300) / 1e-6,
                1.0,
                at_most=True,
            )
        )
        if (family, n) in (("logistic", 200_000), ("poisson", 100_000)):
            targets.append(
                target(
                    f"{label}: gauss_newton / sklearn <= 1",
                    r["gn_over_sklearn"],
                    1.0,
                    at_most=True,
                )
            )
        if n >= 100_000 and "statsmodels_over_gn" in r:
            targets.append(
                target(
                    f"{label}: statsmodels / gauss_newton >= 10",
                    r["statsmodels_over_gn"],
                    10.0,
                    at_most=False,
                )
            )
        if (family, n, d) == ("logistic", 20_000, 100):
            targets.append(
                target(
                    f"{label}: newton (closure) / jax.hessian Newton <= 1.3",
                    r["newton_plain_over_hessian"],
                    1.3,
                    at_most=True,
                )
            )
    record = case_record(
        4,
        f"GLMs: Fisher scoring (gauss_newton) and Newton against hand-written JAX, "
        f"scikit-learn, statsmodels and SciPy (x64, to gradient norm {GLM_TOL:g})",
        rows,
        targets=targets,
        notes=(
            "Per size, every method's calls are interleaved (round-robin) in one process; "
            "'first call' includes compilation (JAX) or is the first run (others); "
            f"ratio_to_irls is the warm median over the hand-written IRLS's. jd rows: "
            f"jd.fit(loss, zeros, rule, data=(X, y), steps={GLM_STEPS}, tol={GLM_TOL:g}); "
            "'nll loss' is jd.losses.nll(X @ w + b, Bernoulli() or Poisson()) (newton then "
            "forms the Hessian as J^T F J: canonical link, affine model); 'plain closure' "
            "is the same mean NLL written by hand (newton uses jax.hessian). sklearn: "
            "LogisticRegression(C=inf) / PoissonRegressor(alpha=0), solver newton-cholesky; "
            "statsmodels: GLM(...).fit() (IRLS); SciPy: minimize(Newton-CG) with the exact "
            "Hessian. max_coef_diff_*: the largest coefficient difference (intercept "
            "included). The fresh row builds an equal rule in every call (it compiles "
            "nothing)."
        ),
        params={
            "sizes": [list(g) for g in groups],
            "tol": GLM_TOL,
            "steps": GLM_STEPS,
            "repeats": repeats,
        },
    )
    if size.full:
        record["large"] = large_logistic_cg()
    return record


def large_logistic_cg(n: int = 1_000_000, d: int = 200, steps: int = 30) -> dict:
    """Logistic regression on ``n x d`` float32 data (0.8 GB at the default size) by
    Gauss-Newton with conjugate gradients (matrix-free: ``J`` and ``G`` are never formed),
    against scikit-learn's lbfgs on the same data: time and peak memory beyond the data."""
    import resource

    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = (rng.standard_normal(d) / np.sqrt(d)).astype(np.float32)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(x @ w + 0.3)))).astype(np.float32)
    data_bytes = x.nbytes + y.nbytes
    loss = jd.losses.nll(_linear, jd.likelihoods.Bernoulli())
    p0 = {"w": jnp.zeros(d, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    data = (jnp.asarray(x), jnp.asarray(y))
    opt = jd.optim.gauss_newton(solver="cg")

    def rss() -> float:  # the process's peak resident memory so far, bytes (Linux: KiB)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0

    before = rss()
    with compile_clock() as compiled:
        t0 = time.perf_counter()
        res = block(jd.fit(loss, p0, opt, data=data, steps=steps, tol=1e-4))
        first = time.perf_counter() - t0
        compile_s = compiled()
    grown = rss() - before
    t0 = time.perf_counter()
    res = block(jd.fit(loss, p0, opt, data=data, steps=steps, tol=1e-4))
    warm = time.perf_counter() - t0
    memory = _compiled_memory(loss, opt, p0, data, steps=steps)
    t0 = time.perf_counter()
    sk = LogisticRegression(C=np.inf, solver="lbfgs", tol=1e-6, max_iter=1000).fit(x, y)
    sk_s = time.perf_counter() - t0
    coef = np.concatenate([[float(res.params["b"])], np.asarray(res.params["w"])])
    sk_coef = np.concatenate([sk.intercept_, sk.coef_[0]])
    beyond = None if memory is None else memory - data_bytes
    return {
        "size": f"{n:,} x {d} float32",
        "data_bytes": data_bytes,
        "jd_first_call_s": first,
        "jd_compile_s": compile_s,
        "jd_warm_s": warm,
        "jd_iterations": int(res.steps_taken),
        "jd_cg_steps_last": int(res.opt_state.cg_steps),
        "jd_status": jd.Status(int(res.status)).name,
        "jd_final_grad_norm": float(res.final_grad_norm),
        "compiled_bytes": memory,
        "compiled_bytes_beyond_data": beyond,
        "peak_rss_growth_bytes": grown,
        "sklearn_lbfgs_s": sk_s,
        "sklearn_iterations": int(sk.n_iter_[0]),
        "max_coef_diff_vs_sklearn": float(np.max(np.abs(coef - sk_coef))),
        "warm_over_sklearn": warm / sk_s,
        "memory_beyond_data_over_data": None if beyond is None else beyond / data_bytes,
    }


# --- case 5: Rosenbrock from (-1.2, 1) -----------------------------------------------------


def _rosenbrock(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def case5(size: Size) -> dict:
    tol = 1e-8
    budget = size.pick(100_000, 50_000, 200)
    newton_budget = size.pick(500, 500, 50)
    methods = [
        (
            "steepest descent + backtracking",
            lambda: optax.chain(jd.optim.sgd(1.0), jd.optim.backtracking_line_search()),
            budget,
        ),
        ("momentum (lr 1e-3, beta 0.9)", lambda: jd.optim.momentum(1e-3, beta=0.9), budget),
        ("Adam (lr 1e-2)", lambda: jd.optim.adam(1e-2), budget),
        ("Newton (trust region, the default)", lambda: jd.optim.newton(), newton_budget),
        ("Newton (line search)", lambda: jd.optim.newton(line_search=True), newton_budget),
        ("saddle-free Newton", lambda: jd.optim.saddle_free_newton(), newton_budget),
        ("Newton-CG", lambda: jd.optim.newton_cg(), newton_budget),
    ]
    if size.tiny:  # the smoke test: one of each family (Newton: Nocedal and Wright's form)
        methods = [methods[i] for i in (0, 4, 6)]
    rows = []
    r = size.pick(5, 5, 1)
    with jax.enable_x64(True):
        x0 = jnp.array([-1.2, 1.0])
        for name, make, steps in methods:
            opt = make()

            def run(opt=opt, steps=steps):
                return jd.fit(_rosenbrock, x0, opt, steps=steps, tol=tol)

            t = measure(run, r)
            res = t.result
            # the same rule built afresh in each call
            fresh = measure_fresh(
                lambda i, make=make, steps=steps: jd.fit(
                    _rosenbrock, x0, make(), steps=steps, tol=tol
                ),
                min(r, 3),
            )
            rows.append(
                entry(
                    name,
                    t,
                    fresh_rule_median_s=fresh.median_s,
                    fresh_rule_compile_s=fresh.compile_s,
                    iterations=int(res.steps_taken),
                    status=jd.Status(int(res.status)).name,
                    final_grad_norm=float(jnp.linalg.norm(jax.grad(_rosenbrock)(res.params))),
                    distance_to_minimum=float(jnp.linalg.norm(res.params - 1.0)),
                    step_budget=steps,
                )
            )
    newton_iters = next(
        (row["iterations"] for row in rows if row["method"].startswith("Newton (trust")), None
    )
    return case_record(
        5,
        f"Rosenbrock from (-1.2, 1) to gradient norm {tol:g} (x64)",
        rows,
        notes=(
            "Nocedal and Wright report about 21 iterations for Newton with line search"
            + (
                f"; jd.optim.newton (trust region, one proposal per step) took {newton_iters}"
                if newton_iters is not None
                else ""
            )
            + ". A run that hits its step budget is "
            "reported with status MAX_STEPS. fresh_rule_median_s: the same call with an equal "
            "rule built afresh each time; fresh_rule_compile_s: what those calls compiled "
            "(zero: the compiled loop is reused)."
        ),
        params={"tol": tol, "first_order_budget": budget, "newton_budget": newton_budget},
    )


# --- case 6: Newton-CG scaling -------------------------------------------------------------


def _separable(x, a):
    """Sum of ``0.5 a_i (x_i - 1)^2 + 0.25 (x_i - 1)^4``: minimum at 1, Hessian diagonal."""
    u = x - 1.0
    return jnp.sum(0.5 * a * u * u + 0.25 * u**4)


def case6(size: Size) -> dict:
    sizes = size.pick([10**3, 10**4, 10**5, 10**6], [10**3, 10**4, 10**5], [100])
    tol = 1e-6
    opt = jd.optim.newton_cg(max_cg_steps=50)
    rows = []
    for count in sizes:
        a = jnp.linspace(1.0, 100.0, count, dtype=jnp.float32)
        x0 = jnp.zeros((count,), jnp.float32)

        def loss(x, batch):
            return _separable(x, batch)

        def run(x0=x0, a=a, loss=loss):
            return jd.fit(loss, x0, opt, data=a, steps=100, tol=tol)

        reps = size.pick(5 if count < 10**6 else 3, 3, 1)
        t = measure(run, reps)
        res = t.result
        fresh = measure_fresh(
            lambda i, x0=x0, a=a, loss=loss: jd.fit(
                loss, x0, jd.optim.newton_cg(max_cg_steps=50), data=a, steps=100, tol=tol
            ),
            min(reps, 3),
        )
        memory = _compiled_memory(loss, opt, x0, a, steps=100)
        rows.append(
            entry(
                f"Newton-CG, n = {count:,}",
                t,
                fresh_rule_median_s=fresh.median_s,
                fresh_rule_compile_s=fresh.compile_s,
                parameters=count,
                iterations=int(res.steps_taken),
                status=jd.Status(int(res.status)).name,
                time_per_iteration_ms=1e3 * t.median_s / max(1, int(res.steps_taken)),
                peak_memory_mib=memory / 2**20 if memory is not None else None,
                bytes_per_parameter=memory / count if memory is not None else None,
            )
        )
    return case_record(
        6,
        "Newton-CG scaling (separable quartic, float32, to gradient norm 1e-6)",
        rows,
        notes=(
            "peak_memory is XLA's buffer assignment for fit's compiled loop "
            "(compiled.memory_analysis(): arguments + outputs + temporaries - aliased), "
            "i.e. device memory the solve needs, not host RSS. fresh_rule_median_s: the same "
            "call with an equal newton_cg built afresh each time; fresh_rule_compile_s: what "
            "those calls compiled (zero: the compiled loop is reused)."
        ),
        params={"sizes": sizes, "tol": tol, "max_cg_steps": 50},
    )


def _compiled_memory(loss, opt, x0, data, steps: int) -> float | None:
    """Bytes XLA assigns to fit's compiled chunk for this problem (None if unavailable)."""
    spec = _core.Spec(None, 0, 1, _core.rows_for(steps, 1))
    program = _programs.loop(loss, opt, spec)
    state = _core.init_state(x0, opt.init(x0), jax.random.key(0), spec)
    try:
        stats = (
            program.lower((loss, opt), state, data, jnp.asarray(1e-6), steps, steps)
            .compile()
            .memory_analysis()
        )
    except Exception:  # memory analysis is backend-dependent
        return None
    if stats is None:
        return None
    return float(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
