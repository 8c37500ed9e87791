"""Focal loss + margin contrastive loss: relu(margin + s_neg - s_pos) over positive/negative pairs.

  python train.py --config configs/margin.py

Result: measured in README.
"""

from pathlib import Path

import ml_collections

from jaxcls.config import load_config


def get_config() -> ml_collections.ConfigDict:
    """Returns default.py with focal + margin contrastive loss."""
    config = load_config(Path(__file__).with_name("default.py"))
    config.name = "margin"
    config.loss.classification = "focal"
    config.contrastive.loss = "margin"
    return config
