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

__all__ = [
    "AdagradState",
    "AdamState",
    "MomentumState",
    "RmspropState",
    "SgdState",
    "adagrad",
    "adam",
    "adamw",
    "momentum",
    "rmsprop",
    "sgd",
]
