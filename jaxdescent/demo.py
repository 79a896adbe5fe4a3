"""``jaxdescent demo``: many random restarts of a small MLP on two moons, in one program.

An MLP classifier (Bernoulli negative log-likelihood) trains on two moons from ``restarts``
random initialisations at once (:func:`jaxdescent.multistart`, one vmapped program) with Adam,
a cyclic learning rate and mini-batches. :func:`run` prints the best, median and worst final
loss, the best restart's accuracy and the restarts that failed, and writes three pictures
and ``summary.json``:

- ``loss_curves.png``: every restart's mini-batch loss, the stuck restarts in red and the
  best in black;
- ``final_losses.png``: the histogram of final losses, with the "stuck" threshold drawn, so
  the printed count of stuck restarts can be read off it;
- ``decision_boundary.png``: the best restart's probability surface over the data.

A restart is *stuck* when its final loss is above ``2 x best + 0.01``: a poorer minimum
(typically with dead ReLU units), not merely a slower run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jaxdescent._terminal import print_table, shown, use_agg

__all__ = ["run", "stuck_threshold"]

NOISE = 0.2  # standard deviation of the moons' noise
LOW, HIGH = 1e-3, 3e-2  # the cyclic learning rate's range


def stuck_threshold(best_loss: float) -> float:
    """The final loss above which a restart counts as stuck: ``2 * best_loss + 0.01``."""
    return 2.0 * float(best_loss) + 0.01


def run(
    *,
    restarts: int = 256,
    steps: int = 2000,
    seed: int = 0,
    hidden: tuple[int, ...] = (8,),
    batch_size: int = 32,
    points: int = 512,
    out: str | Path = "jaxdescent-output",
    progress: bool = True,
) -> dict[str, Any]:
    """Train, print the table, write the pictures and ``summary.json``; return the summary.

    Args:
      restarts: random initialisations, all trained at once.
      steps: optimisation steps per restart.
      seed: seed for the data, the initialisations and the batches.
      hidden: hidden layer widths of the MLP (ReLU units).
      batch_size: mini-batch size (at most ``points``).
      points: training points, and as many held-out test points.
      out: folder for the pictures and ``summary.json`` (created if missing).
      progress: show a progress bar (its loss is the lowest latest mini-batch loss among the
        restarts, ``best_batch_loss``).

    Returns:
      The summary written to ``summary.json``.
    """
    start = time.perf_counter()
    use_agg()
    from jaxdescent import plotting
    from jaxdescent._plotkit import pyplot

    plt = pyplot()  # fails early, with the install hint, without matplotlib
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdescent as jd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    @jax.jit
    def make_data(seed):
        # One compiled program instead of many small eager operations.
        k_train, k_test, k_run = jax.random.split(jax.random.key(seed), 3)
        train = jd.problems.two_moons(k_train, n=points, noise=NOISE)
        test = jd.problems.two_moons(k_test, n=points, noise=NOISE)
        return train, test, k_run

    (x, y), (x_test, y_test), k_run = make_data(seed)
    batch_size = min(batch_size, points)
    sizes = [2, *hidden, 1]
    model = jd.models.mlp(sizes)
    loss = jd.losses.nll(model.apply, jd.likelihoods.Bernoulli())
    period = max(1, min(250, steps // 8))
    opt = jd.optim.adam(jd.schedules.cyclic(LOW, HIGH, step_size=period))

    print(
        f"jaxdescent demo: {restarts} random restarts of an MLP {sizes} on two moons "
        f"({points} training and {points} test points, noise {NOISE})\n"
        f"  Bernoulli negative log-likelihood, Adam with a cyclic learning rate {LOW:g} to "
        f"{HIGH:g} (period {2 * period} steps), mini-batches of {batch_size}, "
        f"{steps} steps; one vmapped program",
        flush=True,
    )
    t0 = time.perf_counter()
    res = jd.multistart(
        model.init,
        loss,
        opt,
        data=(x, y),
        restarts=restarts,
        steps=steps,
        batch_size=batch_size,
        key=k_run,
        progress=progress,
    )
    final = np.asarray(res.final_losses, dtype=float)
    seconds = time.perf_counter() - t0

    def accuracy(params, xs, ys):
        return jnp.mean(jd.likelihoods.Bernoulli().predict(model.apply(params, xs)[:, 0]) == ys)

    train_acc = np.asarray(jax.jit(jax.vmap(accuracy, in_axes=(0, None, None)))(res.params, x, y))
    status = np.asarray(res.status)
    nonfinite = (status == jd.Status.NONFINITE) | ~np.isfinite(final)
    ok = ~nonfinite
    best = int(res.best_index)
    best_loss = final[best]
    threshold = stuck_threshold(best_loss)
    stuck = ok & (final > threshold)
    best_params = jax.jit(lambda p, i: jax.tree.map(lambda a: a[i], p))(res.params, best)
    test_acc = float(jax.jit(accuracy)(best_params, x_test, y_test))
    rows = [
        ("best final loss", f"{best_loss:.4f}", f"restart {best}"),
        ("median final loss", f"{np.median(final[ok]):.4f}" if ok.any() else "-", ""),
        ("worst final loss", f"{np.max(final[ok]):.4f}" if ok.any() else "-", ""),
        (
            "accuracy of the best",
            f"{100 * train_acc[best]:.1f}%",
            f"train; {100 * test_acc:.1f}% on held-out points",
        ),
        (
            "restarts that failed",
            f"{int(nonfinite.sum() + stuck.sum())} of {restarts}",
            f"{int(nonfinite.sum())} non-finite, {int(stuck.sum())} stuck above "
            f"2 x best + 0.01 = {threshold:.4f}",
        ),
        (
            "time",
            f"{seconds:.1f} s",
            f"compile and run; {restarts * steps / seconds:,.0f} restart-steps/s",
        ),
    ]
    print()
    print_table(("", "value", "note"), rows)

    window = min(25, steps)
    groups = {f"stuck, final loss above {threshold:.3g}": stuck}
    if nonfinite.any():
        groups["non-finite"] = nonfinite
    files = {
        "loss_curves.png": plotting.loss_curves(
            np.asarray(res.losses),
            best=best,
            groups=groups,
            smooth=window,
            title=f"{restarts} restarts: mini-batch loss (moving average of {window} steps)",
            ylabel="Bernoulli NLL",
        ),
        "decision_boundary.png": plotting.decision_boundary(
            model.apply,
            best_params,
            x,
            y,
            title=f"best restart ({best}): train {100 * train_acc[best]:.1f}%, "
            f"test {100 * test_acc:.1f}%",
        ),
        "final_losses.png": plotting.restart_histogram(
            final,
            threshold=threshold,
            threshold_label="stuck: 2 \u00d7 best + 0.01",
            title=f"final training loss of {restarts} restarts",
        ),
    }
    for name, fig in files.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    summary = {
        "restarts": restarts,
        "steps": steps,
        "seed": seed,
        "sizes": sizes,
        "best_index": best,
        "final_loss": {
            "best": float(best_loss),
            "median": float(np.median(final[ok])) if ok.any() else None,
            "worst": float(np.max(final[ok])) if ok.any() else None,
        },
        "best_accuracy": {"train": float(train_acc[best]), "test": test_acc},
        "failed": {
            "nonfinite": int(nonfinite.sum()),
            "stuck": int(stuck.sum()),
            "stuck_threshold": threshold,
        },
        "seconds": {"train": seconds, "total": time.perf_counter() - start},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {', '.join(files)} and summary.json to {shown(out)}")
    return summary
