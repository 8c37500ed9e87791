"""Learning-rate, contrastive-weight and temperature schedules (pure functions of the step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxcls.train.settings import ContrastiveSettings, OptimSettings

Array = jax.Array


def learning_rate(optim: OptimSettings, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``optim.lr`` then cosine decay to 0 at ``total_steps``."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def contrastive_weight(con: ContrastiveSettings, step: Array) -> Array:
    """Weight of the contrastive loss at ``step``: zero during warmup, then ramped.

    ``constant`` jumps to ``weight`` after warmup; ``linear`` and ``cosine`` rise to it over
    ``ramp_steps``. The ``uncertainty`` schedule learns its weighting instead, and this
    returns the fixed part (1 after warmup) that gates it.
    """
    if con.loss == "none":
        return jnp.zeros((), jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    after = step - con.warmup_steps
    ramp = float(max(con.ramp_steps, 0))
    progress = jnp.clip(after / ramp, 0.0, 1.0) if ramp > 0 else (after >= 0).astype(jnp.float32)
    if con.schedule == "cosine":
        progress = 0.5 * (1.0 - jnp.cos(jnp.pi * progress))
    elif con.schedule in ("constant", "uncertainty"):
        progress = (after >= 0).astype(jnp.float32)
    target = 1.0 if con.schedule == "uncertainty" else con.weight
    return jnp.where(after >= 0, target * progress, 0.0).astype(jnp.float32)


def temperature(
    con: ContrastiveSettings, step: Array, total_steps: int, learned: Array | None
) -> Array:
    """Contrastive temperature at ``step``: constant, cosine from start to end, or learned."""
    t0 = con.temperature
    if con.temperature_schedule == "learnable":
        # The train step keeps log-temperature inside the range; this clip only absorbs
        # rounding, and passes the gradient straight through so a bound is never a trap.
        t = jnp.exp(learned)
        lo, hi = con.temperature_min, con.temperature_max
        return t + jax.lax.stop_gradient(jnp.clip(t, lo, hi) - t)
    if con.temperature_schedule == "cosine":
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
        t1 = con.temperature_end
        return jnp.asarray(t1 + 0.5 * (t0 - t1) * (1.0 + jnp.cos(jnp.pi * frac)), jnp.float32)
    return jnp.asarray(t0, jnp.float32)
