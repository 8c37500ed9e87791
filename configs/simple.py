"""Focal loss + simple (SupCon) contrastive loss, the reference project's default.

  python train.py --config configs/simple.py

The focal contrastive loss is the same run with `--config.contrastive.loss=focal`.

Result: measured in README.
"""

from pathlib import Path

import ml_collections

from jaxcls.config import load_config


def get_config() -> ml_collections.ConfigDict:
    """Returns default.py with focal + simple contrastive loss."""
    config = load_config(Path(__file__).with_name("default.py"))
    config.name = "simple"
    config.loss.classification = "focal"
    config.contrastive.loss = "simple"
    return config
