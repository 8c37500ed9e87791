"""jaxcls: fine-tune Qwen3 as a text classifier in JAX/Flax with LoRA and contrastive losses."""

from typing import TYPE_CHECKING

from jaxcls.errors import UserError

if TYPE_CHECKING:
    from jaxcls.api import Classifier
    from jaxcls.config import load_config

__all__ = ["Classifier", "UserError", "load_config"]

# Lazy, so that `import jaxcls` (and `jaxcls.errors` in entry points) does not load JAX.
_LAZY = {"Classifier": "jaxcls.api", "load_config": "jaxcls.config"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxcls' has no attribute {name!r}")
