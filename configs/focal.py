"""Focal loss only (the reference project's V2.0), no contrastive loss.

  python train.py --config configs/focal.py

Result: measured in README.
"""

from pathlib import Path

import ml_collections

from jaxcls.config import load_config


def get_config() -> ml_collections.ConfigDict:
    """Returns default.py with focal loss and no contrastive loss."""
    config = load_config(Path(__file__).with_name("default.py"))
    config.name = "focal"
    config.loss.classification = "focal"
    config.contrastive.loss = "none"
    return config
