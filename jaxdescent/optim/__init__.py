"""Update rules: every one an ``optax.GradientTransformationExtraArgs``."""

from jaxdescent.optim.first_order import (
    AdagradState,
    AdamState,
    MomentumState,
    RmspropState,
    SgdState,
    adagrad,
    adam,
    adamw,
    momentum,
    rmsprop,
    sgd,
)
from jaxdescent.optim.least_squares import (
    GaussNewtonState,
    LevenbergMarquardtState,
    gauss_newton,
    levenberg_marquardt,
)
from jaxdescent.optim.line_search import BacktrackingLineSearchState, backtracking_line_search
from jaxdescent.optim.second_order import (
    NewtonCGState,
    NewtonState,
    SaddleFreeNewtonState,
    newton,
    newton_cg,
    saddle_free_newton,
)

__all__ = [
    "AdagradState",
    "AdamState",
    "BacktrackingLineSearchState",
    "GaussNewtonState",
    "LevenbergMarquardtState",
    "MomentumState",
    "NewtonCGState",
    "NewtonState",
    "RmspropState",
    "SaddleFreeNewtonState",
    "SgdState",
    "adagrad",
    "adam",
    "adamw",
    "backtracking_line_search",
    "gauss_newton",
    "levenberg_marquardt",
    "momentum",
    "newton",
    "newton_cg",
    "rmsprop",
    "saddle_free_newton",
    "sgd",
]
