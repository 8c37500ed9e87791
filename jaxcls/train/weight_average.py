"""An exponential moving average of the trainable weights, kept in the optimizer state.

Validation, the best checkpoint, evaluation and export read the average instead of the last
weights (``optim.ema``): on small data the last weights move with every batch, and their
validation score with them; the average is the centre of where they have been moving. As the
last part of the optimizer chain it is saved, restored and resumed with the optimizer state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class AverageState(NamedTuple):
    count: jax.Array  # int32 scalar: updates averaged
    average: PyTree  # float32, biased towards zero (divide by 1 - decay**count)


def weight_average(decay: float) -> optax.GradientTransformation:
    """Leaves the updates as they are and averages the weights they produce:
    ``average = decay * average + (1 - decay) * (params + updates)``."""

    def init(params: PyTree) -> AverageState:
        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        return AverageState(count=jnp.zeros((), jnp.int32), average=zeros)

    def update(updates: PyTree, state: AverageState, params: PyTree = None):
        if params is None:
            raise ValueError("weight_average needs the params in optimizer.update")
        new = optax.apply_updates(params, updates)
        average = jax.tree_util.tree_map(
            lambda a, p: decay * a + (1.0 - decay) * p.astype(jnp.float32), state.average, new
        )
        return updates, AverageState(count=state.count + 1, average=average)

    return optax.GradientTransformation(init, update)


def averaged(trainable: PyTree, opt_state: PyTree, decay: float) -> PyTree:
    """The averaged weights in ``trainable``'s dtypes (``trainable`` itself before any update,
    or when ``decay`` is 0: no average kept).

    ``opt_state``: the optimizer state, or as a checkpoint saved it (its ``AverageState`` read
    back as a dict).
    """
    if decay <= 0:
        return trainable
    state = opt_state[-1]
    count, average = (state["count"], state["average"]) if isinstance(state, dict) else state
    count = jnp.asarray(count)
    correction = jnp.maximum(1.0 - decay ** count.astype(jnp.float32), 1e-30)

    def debiased(average: jax.Array, weight: jax.Array) -> jax.Array:
        return jnp.where(count > 0, average / correction, weight).astype(weight.dtype)

    return jax.tree_util.tree_map(debiased, average, trainable)
