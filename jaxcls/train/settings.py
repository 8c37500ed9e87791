"""Typed settings of the train step, its schedules and losses, built once from the config.

Each class mirrors one config section: its field names are that section's key names, and
``from_config(section)`` reads them, converted to the field's type. Validation with messages
for users stays in ``jaxcls.config``; these classes only assert what the step relies on.
The step, the schedules and the losses read these, never a ``ConfigDict``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from jaxcls.config import is_multi_label
from jaxcls.model.lora import LoRAConfig

_SCALARS = (bool, int, float, str)


def _from_section(cls: type, section: Any, **given: Any) -> Any:
    """``cls`` with each field not in ``given`` read from ``section[field]`` as its type."""
    types = typing.get_type_hints(cls)
    values = dict(given)
    for field in dataclasses.fields(cls):
        if field.name not in values:
            kind = types[field.name]
            value = section[field.name]
            values[field.name] = kind(value) if kind in _SCALARS else value
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """The ``optim`` section: AdamW, warmup + cosine learning rate, clipping, accumulation."""

    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float  # 0 = no clipping
    accumulate: int  # micro-batches per update
    ema: float  # decay of the weight average that validation and the checkpoints read; 0 = none

    def __post_init__(self) -> None:
        assert self.lr > 0 and self.accumulate >= 1, self

    @classmethod
    def from_config(cls, section: Any) -> OptimSettings:
        return _from_section(cls, section)


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The ``loss`` section, with ``focal_alpha`` resolved to per-class weights.

    ``class_weights`` is None (no weighting) or one weight per label (labels.json order); the
    trainer resolves ``loss.focal_alpha`` ("balanced" needs the training label counts).
    """

    classification: str  # "focal" | "ce"
    focal_gamma: float
    label_smoothing: float
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        assert self.classification in ("focal", "ce"), self.classification

    @classmethod
    def from_config(
        cls, section: Any, class_weights: tuple[float, ...] | None = None
    ) -> LossSettings:
        weights = None if class_weights is None else tuple(float(w) for w in class_weights)
        return _from_section(cls, section, class_weights=weights)


@dataclasses.dataclass(frozen=True)
class ContrastiveSettings:
    """The ``contrastive`` section: which loss, its weight schedule and its temperature."""

    loss: str  # "none" | "simple" | "focal" | "margin"
    weight: float
    temperature: float
    base_temperature: float
    focal_gamma: float
    margin: float
    scope: str  # "global": every device's anchors see the whole batch; "local": own rows only
    warmup_steps: int
    ramp_steps: int
    schedule: str  # "constant" | "linear" | "cosine" | "uncertainty"
    temperature_schedule: str  # "constant" | "cosine" | "learnable"
    temperature_end: float
    temperature_min: float
    temperature_max: float
    cached: bool  # with accumulation: one contrastive loss over all micro-batches (GradCache)

    def __post_init__(self) -> None:
        assert self.scope in ("global", "local"), self.scope
        assert 0 < self.temperature_min < self.temperature_max, self

    @classmethod
    def from_config(cls, section: Any) -> ContrastiveSettings:
        return _from_section(cls, section)


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What the train step needs: LoRA, both losses, and the run length for the schedules."""

    lora: LoRAConfig
    loss: LossSettings
    contrastive: ContrastiveSettings
    total_steps: int  # optimizer updates in the run (the temperature schedule's length)
    multi_label: bool = False  # model.problem: sigmoid losses on [B, C] label indicators

    @classmethod
    def from_config(
        cls, cfg: Any, total_steps: int, class_weights: tuple[float, ...] | None = None
    ) -> StepSettings:
        """From a whole config (its ``lora``, ``loss`` and ``contrastive`` sections)."""
        return cls(
            lora=LoRAConfig.from_config(cfg.lora),
            loss=LossSettings.from_config(cfg.loss, class_weights),
            contrastive=ContrastiveSettings.from_config(cfg.contrastive),
            total_steps=int(total_steps),
            multi_label=is_multi_label(cfg),
        )
