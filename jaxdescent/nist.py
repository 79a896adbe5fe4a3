r"""The NIST StRD nonlinear regression problems: reader, models and the LRE score.

The Statistical Reference Datasets of the US National Institute of Standards and Technology
are the standard test of nonlinear least squares software: 27 models, from "lower" to
"higher" difficulty, each with two starting points (far and near), certified parameters and
certified standard deviations. A solver *solves* a start when every parameter matches its
certified value to 6 significant digits, measured by the log relative error

.. math:: \mathrm{LRE} = -\log_{10} \frac{|b - b^*|}{|b^*|}

(the minimum over the parameters). :func:`load` reads a ``.dat`` file as NIST distributes it
and pairs it with the model written here in JAX (all 27 models are included), so a problem is
one call away from :func:`jaxdescent.fit`:

>>> import jax.numpy as jnp, jaxdescent as jd           # doctest: +SKIP
>>> p = jd.nist.load("Misra1a")                          # doctest: +SKIP
>>> loss = jd.losses.nll(p.model, jd.likelihoods.Gaussian())      # doctest: +SKIP
>>> res = jd.fit(loss, p.starts[0], jd.optim.levenberg_marquardt(),
...              data=(p.x, p.y), steps=200)             # doctest: +SKIP

The data files are not shipped in the package: they are read from ``JAXDESCENT_NIST_DIR``, or
from ``shared/data/nist-strd`` beside the repository. Nelson's response is ``log(y)``, as NIST
certifies it, and its ``x`` has two columns.

References:
  Rust, *Statistical Reference Datasets: Nonlinear Regression*, NIST Information Technology
  Laboratory, 2001. McCullough, *Assessing the reliability of statistical software: Part II*,
  The American Statistician 53(2), 1999 (the LRE score).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MODELS", "NistProblem", "data_dir", "load", "lre", "names"]


def _poly_ratio(num: int):
    def model(b, x):
        top = sum(b[i] * x**i for i in range(num))
        bottom = 1.0 + sum(b[num + i] * x ** (i + 1) for i in range(len(b) - num))
        return top / bottom

    return model


def _enso(b, x):
    w = 2 * jnp.pi * x
    return (
        b[0]
        + b[1] * jnp.cos(w / 12)
        + b[2] * jnp.sin(w / 12)
        + b[4] * jnp.cos(w / b[3])
        + b[5] * jnp.sin(w / b[3])
        + b[7] * jnp.cos(w / b[6])
        + b[8] * jnp.sin(w / b[6])
    )


def _gauss(b, x):
    return (
        b[0] * jnp.exp(-b[1] * x)
        + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
        + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2)
    )


def _lanczos(b, x):
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def _misra1a(b, x):
    return b[0] * (1 - jnp.exp(-b[1] * x))


def _chwirut(b, x):
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


# model(b, x) -> predicted y, for every problem of the suite (keyed by NIST's dataset name)
MODELS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "Misra1a": _misra1a,
    "Chwirut2": _chwirut,
    "Chwirut1": _chwirut,
    "Lanczos3": _lanczos,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "DanWood": lambda b, x: b[0] * x ** b[1],
    "Misra1b": lambda b, x: b[0] * (1 - (1 + b[1] * x / 2) ** (-2)),
    "Kirby2": _poly_ratio(3),
    "Hahn1": _poly_ratio(4),
    "Nelson": lambda b, x: b[0] - b[1] * x[:, 0] * jnp.exp(-b[2] * x[:, 1]),
    "MGH17": lambda b, x: b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4]),
    "Lanczos1": _lanczos,
    "Lanczos2": _lanczos,
    "Gauss3": _gauss,
    "Misra1c": lambda b, x: b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5)),
    "Misra1d": lambda b, x: b[0] * b[1] * x / (1 + b[1] * x),
    "Roszman1": lambda b, x: b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / jnp.pi,
    "ENSO": _enso,
    "MGH09": lambda b, x: b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3]),
    "Thurber": _poly_ratio(4),
    "BoxBOD": _misra1a,
    "Rat42": lambda b, x: b[0] / (1 + jnp.exp(b[1] - b[2] * x)),
    "MGH10": lambda b, x: b[0] * jnp.exp(b[1] / (x + b[2])),
    "Eckerle4": lambda b, x: (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
    "Rat43": lambda b, x: b[0] / (1 + jnp.exp(b[1] - b[2] * x)) ** (1 / b[3]),
    "Bennett5": lambda b, x: b[0] * (b[1] + x) ** (-1 / b[2]),
}
"""The model ``model(b, x) -> predicted y`` of every NIST StRD nonlinear regression problem
(all 27), keyed by NIST's data set name, written in JAX."""


class NistProblem(NamedTuple):
    """One NIST problem: data, model, both starts and the certified results."""

    name: str
    model: Callable[[jax.Array, jax.Array], jax.Array]
    x: jax.Array
    y: jax.Array
    starts: jax.Array  # (2, p): Start 1 (far), Start 2 (near)
    certified: jax.Array  # (p,) certified parameter values
    certified_sd: jax.Array  # (p,) certified standard deviations
    certified_rss: float  # residual sum of squares at the certified values
    dof: int  # degrees of freedom, n - p
    difficulty: str  # "Lower", "Average" or "Higher"


def data_dir() -> Path:
    """The folder the ``.dat`` files are read from (``JAXDESCENT_NIST_DIR`` or shared/)."""
    env = os.environ.get("JAXDESCENT_NIST_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for root in (here.parent, here.parent.parent, Path.cwd(), Path.cwd().parent):
        candidate = root / "shared" / "data" / "nist-strd"
        if candidate.is_dir():
            return candidate
    return here.parent.parent / "shared" / "data" / "nist-strd"


def names() -> list[str]:
    """The problems whose data files are in :func:`data_dir`, in NIST's order of difficulty."""
    folder = data_dir()
    found = {p.stem for p in folder.glob("*.dat")} if folder.is_dir() else set()
    return [name for name in MODELS if name in found]


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def load(name_or_path: str | os.PathLike, *, dtype=None) -> NistProblem:
    """Read a NIST StRD nonlinear regression file and attach its JAX model.

    Args:
      name_or_path: a dataset name such as ``"Misra1a"`` (read from :func:`data_dir`) or the
        path of a ``.dat`` file.
      dtype: float dtype of the arrays (default: float64 when x64 is enabled, else float32).

    Returns:
      A :class:`NistProblem`.
    """
    path = Path(name_or_path)
    if path.suffix != ".dat":
        path = data_dir() / f"{name_or_path}.dat"
    if not path.is_file():
        raise FileNotFoundError(
            f"no NIST data file {str(path)!r}; set JAXDESCENT_NIST_DIR to the folder of the "
            f"StRD .dat files (known problems: {', '.join(MODELS)})"
        )
    lines = path.read_text().splitlines()
    name_match = re.search(r"Dataset Name:\s*(\S+)", "\n".join(lines[:5]))
    name = name_match.group(1) if name_match else path.stem
    if name not in MODELS:
        raise ValueError(f"{str(path)!r} holds {name!r}, which is not one of {sorted(MODELS)}")
    starts, certified, sd = [], [], []
    for line in lines:
        m = re.match(
            rf"\s*b(\d+)\s*=\s*({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})", line
        )
        if m:
            starts.append((float(m.group(2)), float(m.group(3))))
            certified.append(float(m.group(4)))
            sd.append(float(m.group(5)))
    text = "\n".join(lines)

    def field(label: str) -> float:
        m = re.search(rf"{label}:\s*({_NUMBER})", text)
        if m is None:
            raise ValueError(f"{str(path)!r} has no {label!r} line")
        return float(m.group(1))

    data_at = max(i for i, line in enumerate(lines) if line.startswith("Data:"))
    rows = [
        [float(v) for v in line.split()]
        for line in lines[data_at + 1 :]
        if line.strip() and re.fullmatch(rf"(\s*{_NUMBER})+\s*", line)
    ]
    table = np.asarray(rows)
    difficulty = re.search(r"(Lower|Average|Higher) Level of Difficulty", text)
    dtype = dtype or jnp.result_type(float)
    y = table[:, 0]
    x = table[:, 1] if table.shape[1] == 2 else table[:, 1:]
    if name == "Nelson":  # NIST certifies the fit of log(y)
        y = np.log(y)
    return NistProblem(
        name=name,
        model=MODELS[name],
        x=jnp.asarray(x, dtype),
        y=jnp.asarray(y, dtype),
        starts=jnp.asarray(np.asarray(starts).T, dtype),
        certified=jnp.asarray(certified, dtype),
        certified_sd=jnp.asarray(sd, dtype),
        certified_rss=field("Residual Sum of Squares"),
        dof=int(field("Degrees of Freedom")),
        difficulty=difficulty.group(1) if difficulty else "",
    )


def lre(estimate, certified) -> float:
    """Log relative error, ``min_i -log10(|b_i - b*_i| / |b*_i|)``, capped at 15 digits."""
    b = np.asarray(estimate, np.float64)
    c = np.asarray(certified, np.float64)
    if not np.all(np.isfinite(b)):
        return 0.0
    rel = np.abs(b - c) / np.where(c == 0, 1.0, np.abs(c))
    with np.errstate(divide="ignore"):
        digits = -np.log10(rel)
    return float(np.clip(np.min(digits), 0.0, 15.0))
