"""Causal language-model pretraining of a new random-init base on the run's training texts.

A random-init Qwen3 knows nothing of its language: classification must teach it which tokens
go together from a few thousand labelled rows. Predicting each next token of the training
texts first (the decoder's own objective, with the tied embedding as its output layer) teaches
that from the texts alone, so classification starts from features that already group words
of a topic. The result is an ordinary Qwen3 base: it is saved in the run dir's ``base/`` and
exported like any other.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxcls.data import batches, long_text, tokenizer
from jaxcls.model.qwen3 import Qwen3Config, Qwen3Model

log = logging.getLogger("jaxcls")

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """The ``pretrain`` config section."""

    epochs: int
    max_tokens: int
    lr: float
    skip_truncated: bool
    batch_size: int
    max_length: int
    seed: int

    @classmethod
    def from_config(cls, cfg: Any) -> PretrainSettings:
        return cls(
            epochs=int(cfg.pretrain.epochs),
            max_tokens=int(cfg.pretrain.max_tokens),
            lr=float(cfg.pretrain.lr),
            skip_truncated=bool(cfg.pretrain.skip_truncated),
            batch_size=int(cfg.train.batch_size),
            max_length=int(cfg.data.max_length),
            seed=int(cfg.seed),
        )


def lm_dataset(texts: Sequence[str], tok: Any, max_length: int) -> tuple[batches.Dataset, float]:
    """Each text's tokens followed by end-of-text, at most ``max_length`` tokens in all (what
    truncating classification reads of it); and the share of texts longer than ``max_length``
    tokens."""
    end = tok.eos_token_id if tok.eos_token_id is not None else tokenizer.pad_id(tok)
    full = tokenizer.tokenize(texts, tok, 2**62)
    ids = [np.append(x[: max_length - 1], end).astype(np.int32) for x in full]
    share = long_text.share_longer([len(x) for x in full], max_length)
    return batches.Dataset(ids=ids, labels=None), share


def pretrain_plan(data: batches.Dataset, settings: PretrainSettings) -> list[np.ndarray]:
    """The run's batches: ``epochs`` epochs of ``batches.length_grouped_plan``, cut before the
    one that would take the real tokens seen past ``max_tokens`` (0 = no cap; at least one)."""
    lengths = data.lengths
    plan = [
        indices
        for epoch in range(settings.epochs)
        for indices in batches.length_grouped_plan(
            lengths, settings.batch_size, settings.max_length, settings.seed, epoch
        )
    ]
    if not settings.max_tokens or not plan:
        return plan
    seen = np.cumsum([lengths[b[b >= 0]].sum() for b in plan])
    return plan[: max(1, int(np.searchsorted(seen, settings.max_tokens, side="right")))]


def next_token_loss(module: Qwen3Model, params: PyTree, batch: dict) -> jax.Array:
    """Mean cross-entropy of each real token given the ones before it (tied output layer)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden, _ = module.apply({"params": params}, ids, mask)
    embedding = params["embed_tokens"]["embedding"].astype(jnp.float32)
    logits = hidden[:, :-1].astype(jnp.float32) @ embedding.T
    weight = mask[:, 1:] * batch["valid"][:, None]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    return (nll * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def pretrain(
    config: Qwen3Config,
    params: PyTree,
    texts: Sequence[str],
    tok: Any,
    settings: PretrainSettings,
    show_progress: bool = True,
) -> tuple[PyTree, int]:
    """``params`` (``{"model": ...}``, host arrays) after next-token training on ``texts``,
    and the number of steps taken (0: skipped). Runs on one device: only the small
    random-init bases take this path."""
    if not config.tie_word_embeddings:
        raise ValueError("next-token pretraining uses the tied embedding as its output layer")
    data, share = lm_dataset(texts, tok, settings.max_length)
    if settings.skip_truncated and long_text.is_documents(share):
        log.info(
            "pretraining skipped: %.0f%% of the training texts are longer than data.max_length=%d "
            "tokens (documents), where on the quality suite it gained little or cost accuracy (set "
            "pretrain.skip_truncated=false to pretrain anyway)", 100 * share, settings.max_length,
        )  # fmt: skip
        return params, 0
    plan = pretrain_plan(data, settings)
    n_steps = len(plan)
    if n_steps == 0:
        return params, 0
    pad = tokenizer.pad_id(tok)
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, max(1, n_steps // 20), n_steps)
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01)
    )
    module = Qwen3Model(config)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda q: next_token_loss(module, q, batch))(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    p = jax.tree_util.tree_map(jnp.asarray, params["model"])
    opt_state = optimizer.init(p)
    log.info(
        "pretraining the random-init base: next-token prediction on %d training texts, "
        "%d steps (pretrain.epochs=%d, pretrain.max_tokens=%d; pretrain.epochs=0 skips it)",
        len(data), n_steps, settings.epochs, settings.max_tokens,
    )  # fmt: skip
    start, losses, tokens = time.perf_counter(), [], 0
    with tqdm(total=n_steps, unit="step", desc="pretrain", disable=not show_progress) as bar:
        for i, indices in enumerate(plan):
            batch = batches.collate(data, indices, pad, settings.max_length)
            p, opt_state, loss = step(p, opt_state, batch)
            tokens += int(batch["attention_mask"].sum())
            if i % 20 == 0 or i == n_steps - 1:
                losses.append(float(loss))
                rate = tokens / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:.0f}")
            bar.update(1)
    log.info(
        "pretraining done in %.0f s: next-token loss %.3f -> %.3f",
        time.perf_counter() - start, losses[0], losses[-1],
    )  # fmt: skip
    return {"model": jax.tree_util.tree_map(np.asarray, p)}, n_steps
