"""Cross-entropy only: the plain baseline, no focal weighting, no contrastive loss.

  python train.py --config configs/ce.py

Result: measured in README.
"""

from pathlib import Path

import ml_collections

from jaxcls.config import load_config


def get_config() -> ml_collections.ConfigDict:
    """Returns default.py with cross-entropy and no contrastive loss."""
    config = load_config(Path(__file__).with_name("default.py"))
    config.name = "ce"
    config.loss.classification = "ce"
    config.contrastive.loss = "none"
    return config
