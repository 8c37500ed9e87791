"""The frozen backbone and tokenizer a run starts from: a model dir, or a random-init preset."""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import interrupts
from jaxcls.data import learned_tokenizer, tokenizer
from jaxcls.data.demo import qwen_tokenizer_dir
from jaxcls.errors import UserError
from jaxcls.formats import model_dir
from jaxcls.model.dtypes import DTYPES
from jaxcls.model.qwen3 import Qwen3Config, Qwen3Model
from jaxcls.train import lm_pretrain

log = logging.getLogger("jaxcls")

BASE_DIR = "base"


def random_config(model_cfg: Any, vocab_size: int) -> Qwen3Config:
    """The random-init preset's architecture (vocab rounded up to a multiple of 128)."""
    return Qwen3Config(
        vocab_size=-(-vocab_size // 128) * 128,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.head_dim,
    )


def init_random(config: Qwen3Config, seed: int, param_dtype: str) -> dict[str, Any]:
    """Random backbone params ``{"model": ...}`` as host NumPy arrays."""
    module = Qwen3Model(config, param_dtype=DTYPES[param_dtype])
    ids = jnp.zeros((1, 1), jnp.int32)
    params = jax.jit(module.init)(jax.random.PRNGKey(seed), ids, ids)["params"]
    return {"model": jax.tree_util.tree_map(np.asarray, params)}


def load_backbone(
    cfg: Any, workdir: Path, write: bool = True, train_texts: Sequence[str] | None = None
) -> model_dir.LoadedModel:
    """The run's starting model: ``model.path``, or the random-init base saved in the run dir.

    A random-init base is saved once as ``workdir/base`` with its tokenizer (Qwen3's, or with
    ``model.tokenizer="data"`` one learned from ``train_texts``), so the run can be resumed,
    evaluated and exported without re-deriving it.
    """
    if cfg.model.path:
        return model_dir.read_model(cfg.model.path, dtype=cfg.model.param_dtype)
    base = workdir / BASE_DIR
    if (base / model_dir.META_FILE).is_file():
        return model_dir.read_model(base, dtype=cfg.model.param_dtype)
    pretraining = lm_pretrain.PretrainSettings.from_config(cfg)
    if train_texts is None and (cfg.model.tokenizer == "data" or pretraining.epochs):
        raise UserError(
            f"{base}: the run's random-init base (its learned tokenizer and pretrained weights) "
            "is missing; train the run again (or restore that folder)"
        )
    tok_dir = random_init_tokenizer(cfg.model, train_texts)
    tok = tokenizer.load_tokenizer(tok_dir)
    config = random_config(cfg.model, len(tok))
    params = init_random(config, cfg.seed, cfg.model.param_dtype)
    log.info(
        "model.path is empty: random-init Qwen3 preset %r (hidden %d, %d layers, vocab %d)",
        cfg.model.preset, config.hidden_size, config.num_hidden_layers, config.vocab_size,
    )  # fmt: skip
    source = f"random:{cfg.model.preset}"
    if pretraining.epochs:
        params, steps = lm_pretrain.pretrain(config, params, train_texts, tok, pretraining, write)
        if steps:
            source += f" + next-token pretraining ({steps} steps)"
    if write:
        model_dir.write_model(base, config, params, None, tokenizer_dir=tok_dir, source=source)
        tok_dir = base
    return model_dir.LoadedModel(config, params, None, tok_dir)


def random_init_tokenizer(model_cfg: Any, train_texts: Sequence[str] | None) -> Path:
    """The tokenizer dir of a new random-init base under ``model.tokenizer``."""
    if model_cfg.tokenizer == "qwen":
        return qwen_tokenizer_dir()
    tok_dir = Path(tempfile.mkdtemp(prefix="jaxcls-tokenizer-"))
    remove = functools.partial(shutil.rmtree, tok_dir, True)  # the run dir's base has a copy
    atexit.register(remove)
    interrupts.on_exit(remove)  # Ctrl-C's exit skips atexit
    learned_tokenizer.write_learned_tokenizer(train_texts, model_cfg.vocab_size, tok_dir)
    return tok_dir
