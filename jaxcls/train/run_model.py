"""The model side of a run: tokenizer, classifier, labels, and the trainable/frozen split.

Training builds a ``RunModel`` from a config; evaluation, prediction and export rebuild the
same one from a run directory (its ``config.json`` and ``labels.json``) and restore a
checkpoint into it (``jaxcls.train.restore``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import runtime
from jaxcls.config import is_multi_label
from jaxcls.data import batches, label_sets, tables, tokenizer
from jaxcls.errors import UserError
from jaxcls.formats import peft_dir
from jaxcls.model import layerstack, lora, quant
from jaxcls.model.classifier import HEADS, HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config
from jaxcls.train import base_model, sharding, steps, warmstart
from jaxcls.train.settings import ContrastiveSettings

log = logging.getLogger("jaxcls")

PyTree = Any


@dataclasses.dataclass
class RunModel:
    cfg: Any
    workdir: Path
    config: Qwen3Config
    model: Qwen3Classifier
    lora: lora.LoRAConfig
    tokenizer: Any
    label_names: list[str]
    trainable: PyTree  # {"adapters", "params", "extra"} (host or device arrays)
    frozen: PyTree
    train_base: bool
    base_mesh: Any = None  # the mesh place_base put ``frozen`` on (None: host arrays)
    eval_steps: dict = dataclasses.field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        return tokenizer.pad_id(self.tokenizer)

    def dataset(self, table: tables.Table, labelled: bool = True) -> batches.Dataset:
        names = self.label_names if labelled else None
        data = self.cfg.data
        return batches.make_dataset(
            table, self.tokenizer, names, data.max_length, data.template, *long_text_settings(data)
        )

    def read_table(self, path: str, labelled: bool = True) -> tables.Table:
        """A data file read with the run's column and label settings."""
        data = self.cfg.data
        if not labelled:
            return tables.read_table(path, data.text_column, None)
        fmt = label_sets.label_format(data)
        return label_sets.read_labelled(path, data.text_column, data.label_column, fmt)

    def place_base(self, mesh: Any) -> PyTree:
        """Move the frozen base onto ``mesh`` in the steps' layout (layers stacked, kernels as
        bits: ``layerstack.step_layout``), releasing the host copy as it goes so the process
        never holds the base twice; ``self.frozen`` is then that device tree, which is returned.
        Placed once: later calls with the same mesh return it as it is.
        """
        if self.base_mesh is mesh:
            return self.frozen
        with runtime.large_blocks_unmapped_on_free():
            layout = layerstack.step_layout(
                self.frozen, steps.scanned_layers(self.model), consume=True
            )
            self.frozen = None
            self.frozen = sharding.move_params(layout, mesh)
        self.base_mesh = mesh
        return self.frozen

    def eval_step(self, mesh: Any) -> Callable:
        """The jitted eval step on ``mesh`` (``steps.make_eval_step``), made once per mesh, so
        validation in training and the final test evaluation share one compilation."""
        if mesh not in self.eval_steps:
            self.eval_steps[mesh] = jax.jit(
                steps.make_eval_step(self.model, self.lora, mesh, is_multi_label(self.cfg)),
                out_shardings=sharding.replicated(mesh),
            )
        return self.eval_steps[mesh]

    def merged_params(self, trainable: PyTree | None = None) -> PyTree:
        """Plain params with LoRA folded in (export; inference on a float base)."""
        trainable = self.trainable if trainable is None else trainable
        params = lora.combine(self.frozen, trainable["params"])
        return lora.merge(params, trainable["adapters"], self.lora)

    def inference_params(self) -> PyTree:
        """Params for ``api.Classifier``: ``merged_params`` on a float base; on an int8 base,
        LoRA kept factored over the int8 kernels (as training and evaluation compute it;
        merging would need float kernels), in the scanned model's layout when it scans."""
        if not quant.is_quantized(self.frozen):
            return self.merged_params()
        n = steps.scanned_layers(self.model)
        return steps.assemble(self.trainable, self.frozen, self.lora, False, n)


def long_text_settings(data: Any) -> tuple[str, int]:
    """(``data.long_text``, ``data.window_stride``); a run dir from before the keys truncates."""
    return data.get("long_text", "truncate"), int(data.get("window_stride", 0))


def from_peft(cfg: Any, peft_path: str | Path) -> RunModel:
    """An inference run of a peft adapter on ``model.path`` (empty: the adapter's
    base_model_name_or_path): LoRA merged into the kernels, the adapter's score head."""
    loaded = peft_dir.load_merged(peft_path, cfg.model.path, cfg.model.param_dtype)
    if loaded.tokenizer_dir is None:
        raise_no_tokenizer(cfg.model.path or peft_path)
    labels = loaded.labels
    model = Qwen3Classifier(loaded.config, HeadConfig.from_config(cfg.model, len(labels)))
    heads, frozen = lora.partition(loaded.params, HEADS)
    extra = steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive))
    trainable = {"adapters": {}, "params": heads, "extra": extra}
    return RunModel(
        cfg, Path(peft_path), loaded.config, model, lora.LoRAConfig.from_config(cfg.lora),
        tokenizer.load_tokenizer(loaded.tokenizer_dir), labels, trainable, frozen, False,
    )  # fmt: skip


def build(
    cfg: Any,
    workdir: Path,
    label_names: list[str],
    write_base: bool = True,
    warm_start: bool = True,
    quantize: bool = True,
    train_texts: Sequence[str] | None = None,
) -> RunModel:
    """Model, tokenizer and fresh trainable state for ``label_names``.

    ``train_texts``: what a new random-init base learns its vocabulary from
    (``model.tokenizer="data"``); a run dir's saved base already has its tokenizer.

    ``warm_start`` starts the adapters from ``lora.init_from`` and logs which score head the
    run starts from; a run restored from its own checkpoint does not need (or re-read) that
    source, and its heads are its own. ``quantize=False`` keeps the base in
    full precision whatever ``model.quantize`` says (export merges LoRA into those weights).
    """
    # Reading and stacking the base frees large blocks; unmapped at once, they don't
    # fragment the heap (runtime.large_blocks_unmapped_on_free).
    with runtime.large_blocks_unmapped_on_free():
        loaded = base_model.load_backbone(cfg, workdir, write_base, train_texts)
        if quantize and cfg.model.get("quantize", "none") == "int8":
            quant.quantize_params(loaded.params)  # in place: each float kernel freed in turn
    if loaded.tokenizer_dir is None:
        raise_no_tokenizer(cfg.model.path)
    head = HeadConfig.from_config(cfg.model, len(label_names))
    _check_feature_layer(head, loaded.config)
    model = Qwen3Classifier(loaded.config, head)
    heads = init_heads(
        model, cfg.seed, loaded.params.get("score"), loaded.labels, label_names, warm_start
    )
    train_base = bool(cfg.model.train_base) and not cfg.model.path
    params = lora.combine(loaded.params, heads)
    if train_base:
        trainable_params, frozen = params, {}
    else:
        trainable_params, frozen = lora.partition(params, HEADS)
    lora_cfg = lora.LoRAConfig.from_config(cfg.lora)
    adapters = lora.init(loaded.params, lora_cfg, jax.random.PRNGKey(cfg.seed + 1))
    if cfg.lora.init_from and warm_start:
        adapters, score = warmstart.init_from(
            cfg.lora.init_from, loaded.params, lora_cfg, adapters, label_names, cfg.model.path,
            loaded.labels,
        )  # fmt: skip
        if score is not None:
            kernel = trainable_params["score"]["kernel"]
            trainable_params["score"]["kernel"] = score.astype(kernel.dtype)
    trainable = {
        "adapters": adapters,
        "params": trainable_params,
        "extra": steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive)),
    }
    tok = tokenizer.load_tokenizer(loaded.tokenizer_dir)
    return RunModel(
        cfg, workdir, loaded.config, model, lora_cfg, tok, label_names, trainable, frozen,
        train_base,
    )  # fmt: skip


def raise_no_tokenizer(where: str | Path) -> None:
    raise UserError(
        f"{where}: no tokenizer files (tokenizer.json, tokenizer_config.json); "
        "copy them from the Hugging Face model dir"
    )


def _check_feature_layer(head: HeadConfig, config: Qwen3Config) -> None:
    n = config.num_hidden_layers + 1
    if not -n <= head.feature_layer < n:
        raise UserError(
            f"config key 'model.feature_layer' is {head.feature_layer}; this model has "
            f"{config.num_hidden_layers} layers, use -1 or 0..{config.num_hidden_layers}"
        )


def init_heads(
    model: Qwen3Classifier,
    seed: int,
    score: PyTree | None,
    score_labels: list[str] | None,
    label_names: list[str],
    announce: bool,
) -> dict[str, Any]:
    """Fresh ``score`` (+ ``projection``) params; a checkpoint's own ``score`` head is kept
    when its labels are exactly ``label_names``. ``announce`` logs which (not for a run
    about to restore its own trained heads)."""
    ids = jnp.zeros((1, 1), jnp.int32)

    def heads_only(rng):  # jit drops the backbone's initialisation: only the heads are computed
        params = model.init(rng, ids, ids)["params"]
        return {k: v for k, v in params.items() if re.match(HEADS, k)}

    heads = jax.tree_util.tree_map(np.asarray, jax.jit(heads_only)(jax.random.PRNGKey(seed + 2)))
    if score is not None and score_labels == list(label_names):
        heads["score"] = score
        if announce:
            log.info("using the checkpoint's score head (labels %s)", score_labels)
    elif score is not None and announce:
        log.info("the checkpoint's score head has labels %s; a new head is trained", score_labels)
    return heads
