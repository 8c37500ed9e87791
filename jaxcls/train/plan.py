"""How long a run trains, how often it validates and how it warms up, and how it reads long
texts, from the data.

A config may leave these at 0 ("auto"): ``optim.lr``, ``train.epochs`` (with
``train.max_steps`` 0), ``train.eval_every`` and ``optim.warmup_steps``. ``resolve`` fills them
from the recipe of the model kind (a random-init base trained whole, or LoRA on a pretrained
``model.path``) and the number of training sequences (the rows, or their windows when texts are
read in windows), and says what it chose. ``data.long_text="auto"`` is filled in first, by
``resolve_long_text``, from the training texts' token counts. The resolved config is what the
run uses and what its config.json records, so a resumed run plans the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import ml_collections

from jaxcls.data import long_text


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Defaults for one kind of model; ``target_updates`` sets epochs for small data sets."""

    name: str
    lr: float
    target_updates: int
    min_epochs: int
    max_epochs: int


# A random-init base trains whole, from scratch: a small data set gets several epochs so that it
# sees about as many updates as the demo's one epoch (435); LoRA on a pretrained model takes a
# lower learning rate and 2-5 epochs (the usual peft recipe). Early stopping (train.patience)
# ends either run when validation stops improving.
RANDOM_INIT = Recipe("random-init base, trained whole", 1e-3, 400, 1, 20)
LORA = Recipe("LoRA on a pretrained base", 2e-4, 600, 2, 5)


def recipe_of(cfg: ml_collections.ConfigDict) -> Recipe:
    return LORA if cfg.model.path else RANDOM_INIT


def updates_per_epoch(n_train: int, batch_size: int, accumulate: int) -> int:
    """Optimizer updates in one pass over ``n_train`` rows."""
    micro = -(-n_train // batch_size)
    return -(-micro // accumulate)


def resolve(
    cfg: ml_collections.ConfigDict, n_train: int
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """A copy of ``cfg`` with its "auto" values filled in, and one line per choice made."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    recipe, notes = recipe_of(cfg), []
    per_epoch = updates_per_epoch(n_train, cfg.train.batch_size, cfg.optim.accumulate)
    if out.optim.lr == 0:
        out.optim.lr = recipe.lr
        notes.append(f"optim.lr={recipe.lr:g} ({recipe.name} recipe)")
    if out.train.max_steps == 0 and out.train.epochs == 0:
        epochs = min(max(math.ceil(recipe.target_updates / per_epoch), recipe.min_epochs),
                     recipe.max_epochs)  # fmt: skip
        out.train.epochs = epochs
        notes.append(
            f"train.epochs={epochs} ({n_train} training sequences = {per_epoch} updates per epoch; "
            f"{recipe.name} recipe: about {recipe.target_updates} updates, "
            f"{recipe.min_epochs}-{recipe.max_epochs} epochs)"
        )
    total = out.train.max_steps or out.train.epochs * per_epoch
    if out.train.eval_every == 0:
        out.train.eval_every = max(1, math.ceil(per_epoch / out.train.evals_per_epoch))
        notes.append(f"train.eval_every={out.train.eval_every} "
                     f"({out.train.evals_per_epoch} validations per epoch)")  # fmt: skip
    if out.optim.warmup_steps == 0:
        out.optim.warmup_steps = round(out.optim.warmup_ratio * total)
        ratio = out.optim.warmup_ratio
        notes.append(f"optim.warmup_steps={out.optim.warmup_steps} ({ratio:g} of {total} steps)")
    out.lock()
    return out, notes


def resolve_long_text(
    cfg: ml_collections.ConfigDict, lengths: Sequence[int]
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """``cfg`` (its ``data.long_text`` "auto") with ``long_text.auto_mode`` of the training
    texts' token counts ``lengths`` in its place, and a line saying what it chose."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    out.data.long_text = long_text.auto_mode(lengths, cfg.data.max_length)
    share = long_text.share_longer(lengths, cfg.data.max_length)
    note = (
        f"data.long_text={out.data.long_text} ({share:.0%} of the training texts are longer than "
        f"data.max_length={cfg.data.max_length} tokens; windows when over "
        f"{long_text.DOCUMENT_SHARE:.0%})"
    )
    out.lock()
    return out, [note]


def warmup_warning(cfg: ml_collections.ConfigDict, total_steps: int) -> str | None:
    """A warning when the learning rate would never leave its warm-up."""
    if cfg.optim.warmup_steps >= total_steps > 0:
        return (
            f"optim.warmup_steps={cfg.optim.warmup_steps} >= the run's {total_steps} steps: the "
            "learning rate never decays; lower optim.warmup_steps or use optim.warmup_ratio"
        )
    return None
