"""``Classifier``: load a model and predict labels, probabilities and features for texts.

A multi-label model (a ``model.problem=multi_label`` run, or an HF dir whose config.json has
``problem_type: multi_label_classification``) gives sigmoid probabilities and label sets cut
at its per-label thresholds (the run's thresholds.json; 0.5 where there are none).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.config import is_multi_label
from jaxcls.data import batches, label_sets, splits
from jaxcls.data import tokenizer as tokenizer_lib
from jaxcls.data.long_text import average_by_row
from jaxcls.errors import UserError
from jaxcls.eval import blend as blend_lib
from jaxcls.eval import calibration
from jaxcls.eval.multilabel import DEFAULT_THRESHOLD, apply_thresholds, tune_thresholds
from jaxcls.formats import hf_dir, model_dir, peft_dir, run_dir
from jaxcls.model import layerstack, quant
from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config
from jaxcls.train import restore, run_model


class Classifier:
    """A text classifier with merged (plain) params; see ``Classifier.load``."""

    def __init__(
        self,
        config: Qwen3Config,
        head: HeadConfig,
        params: Any,
        tokenizer: Any,
        labels: list[str],
        max_length: int = 512,
        template: str = "",
        batch_size: int = 16,
        quantize: str = "none",
        long_text: str = "truncate",
        window_stride: int = 0,
        temperature: float | Sequence[float] = 1.0,
        multi_label: bool = False,
        thresholds: Sequence[float] | None = None,
        label_sep: str = "|",
        blend: blend_lib.Blend | None = None,
    ) -> None:
        """``long_text``, ``window_stride``: as the config keys data.*; ``temperature``: the
        probabilities are softmax(logits / temperature) (a run's calibration.json);
        ``multi_label``: sigmoid(logits / temperature) outputs (one temperature, or one per
        label), label sets cut at ``thresholds`` (one per label, default 0.5); ``label_sep``
        joins a label set in predict's output tables; ``blend``: an n-gram blend mixed into
        the logits (a run's blend.json)."""
        if len(labels) != head.num_labels:
            raise ValueError(f"{len(labels)} labels for a head of {head.num_labels} classes")
        if quantize not in quant.QUANTIZE:
            raise UserError(f"quantize is {quantize!r}; use one of: {', '.join(quant.QUANTIZE)}")
        if quantize == "int8":  # the base's float kernels (a run's int8 base already is)
            params = quant.quantize_params(params)
        self.config, self.head, self.labels = config, head, list(labels)
        self.multi_label, self.label_sep, self.blend = multi_label, label_sep, blend
        self.thresholds = None
        if multi_label:
            cut = [DEFAULT_THRESHOLD] * len(labels) if thresholds is None else thresholds
            self.thresholds = np.asarray(cut, np.float64)
        self.tokenizer, self.max_length, self.template = tokenizer, max_length, template
        self.batch_size, self.long_text, self.window_stride = batch_size, long_text, window_stride
        scalar = np.ndim(temperature) == 0
        self.temperature = float(temperature) if scalar else np.asarray(temperature, np.float64)
        # Right padding with the tokenizer's pad token (<|endoftext|> for Qwen), else EOS.
        self.pad_id = tokenizer_lib.pad_id(tokenizer)
        if head.scan:  # the scanned model's layout (never differentiated here: bits are fine)
            params = layerstack.step_layout(params, config.num_hidden_layers)
        self.params = jax.device_put(params)
        model = Qwen3Classifier(config, head)

        def forward(params, ids, mask):
            logits, features = model.apply({"params": params}, ids, mask)
            return logits.astype(jnp.float32), features

        # Fixed batch size and length buckets: one compilation per bucket.
        self._forward = jax.jit(forward)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        ckpt: str = "best",
        *,
        dtype: str | None = None,
        max_length: int = 512,
        batch_size: int = 16,
        base: str | os.PathLike | None = None,
        quantize: str = "none",
    ) -> Classifier:
        """Load from a converted jaxcls model dir, a Hugging Face seq-cls dir, a training run
        dir, or a peft LoRA adapter dir on ``base`` (default: its base_model_name_or_path).

        ``dtype`` is the compute dtype: default float32 on CPU, bfloat16 on accelerators.
        ``ckpt`` (best | latest | step | path) selects the checkpoint of a training run dir.
        ``quantize="int8"`` stores the base's attention and MLP kernels as int8 (LoRA merged
        first); a run trained with ``model.quantize = "int8"`` loads as int8 in any case.
        """

        path = Path(path)
        dtype = dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
        # The one place that dispatches on the kind of path: a training run dir (with
        # checkpoints/ and `ckpt`), a peft adapter dir, or a model dir (converted or HF).
        if (path / "checkpoints").is_dir():
            return cls._from_run(path, ckpt, dtype, batch_size, quantize)
        if peft_dir.is_adapter_dir(path):
            loaded = peft_dir.load_merged(path, base)
            return cls._from_loaded(loaded, path, dtype, max_length, batch_size, quantize)
        if base is not None:
            raise UserError(f"{path}: not a peft adapter dir (no adapter_config.json); drop base")
        loaded = model_dir.read_model(path)
        return cls._from_loaded(loaded, path, dtype, max_length, batch_size, quantize)

    @classmethod
    def _from_run(
        cls, path: Path, ckpt: str, dtype: str, batch_size: int, quantize: str
    ) -> Classifier:
        """A training run at checkpoint ``ckpt`` (``RunModel.inference_params``), with the
        run's n-gram blend and temperature when fitted on this checkpoint, and a multi-label run's
        thresholds of that checkpoint (tuned on its validation set and saved when
        thresholds.json has none)."""
        run, step = restore.load_run(path, ckpt)
        head = dataclasses.replace(run.model.head, dtype=dtype, remat=False)
        long_text, stride = run_model.long_text_settings(run.cfg.data)
        multi = is_multi_label(run.cfg)
        saved = run_dir.load_thresholds(path, run.label_names, step) if multi else None
        clf = cls(
            run.config,
            head,
            run.inference_params(),
            run.tokenizer,
            run.label_names,
            max_length=run.cfg.data.max_length,
            template=run.cfg.data.template,
            batch_size=batch_size,
            quantize=quantize,
            long_text=long_text,
            window_stride=stride,
            temperature=run_dir.load_temperature(path, step) or 1.0,
            multi_label=multi,
            thresholds=saved,
            label_sep=run.cfg.data.get("label_sep", "") or "|",
            blend=None if multi else blend_lib.load(path, step),
        )
        if multi and saved is None:
            clf.thresholds = clf.tune_thresholds(splits.read_inputs(run.cfg.data, run.cfg.seed).val)
            run_dir.save_thresholds(path, step, run.label_names, clf.thresholds)
        return clf

    def tune_thresholds(self, table: label_sets.Table) -> np.ndarray:
        """Per-label thresholds maximising each label's F1 on a labelled multi-label table."""
        targets = label_sets.encode(table, self.labels)
        return tune_thresholds(self.predict_proba(table.texts), targets)

    @classmethod
    def _from_loaded(
        cls, loaded: Any, path: Path, dtype: str, max_length: int, batch_size: int, quantize: str
    ) -> Classifier:
        """From a ``model_dir.LoadedModel`` with a score head (plain params)."""
        if loaded.id2label is None:
            raise UserError(
                f"{path}: a base model without a classification head (score); train on it first"
            )
        if loaded.tokenizer_dir is None:
            raise UserError(f"{path}: no tokenizer files; copy the model's tokenizer.json there")
        param_dtype = jax.tree_util.tree_leaves(loaded.params)[0].dtype.name
        labels = loaded.labels
        head = HeadConfig(num_labels=len(labels), dtype=dtype, param_dtype=param_dtype)
        tokenizer = tokenizer_lib.load_tokenizer(loaded.tokenizer_dir)
        multi = hf_dir.problem_type(path) == hf_dir.MULTI_LABEL
        return cls(
            loaded.config, head, loaded.params, tokenizer, labels, max_length,
            batch_size=batch_size, quantize=quantize, multi_label=multi,
            thresholds=run_dir.load_thresholds(path, labels) if multi else None,
        )  # fmt: skip

    def _run(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(logits [n, C], features [n, F]) in the order of ``texts``; a text split into
        windows gets the mean of its windows' logits and features."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        ids, row_index = tokenizer_lib.tokenize_rows(
            list(texts), self.tokenizer, self.max_length, self.template,
            long_text=self.long_text, stride=self.window_stride,
        )  # fmt: skip
        # Batches of similar lengths pad little; the results go back to the input order.
        order = np.argsort([len(x) for x in ids], kind="stable").astype(np.int64)
        dataset = batches.Dataset(ids=[ids[i] for i in order], labels=None)
        logits = np.zeros((len(ids), self.head.num_labels), np.float32)
        features = np.zeros(
            (len(ids), self.head.projection_dim or self.config.hidden_size), np.float32
        )
        done = 0
        for batch in batches.eval_batches(dataset, self.batch_size, self.pad_id, self.max_length):
            z, f = jax.device_get(
                self._forward(self.params, batch["input_ids"], batch["attention_mask"])
            )
            rows = order[done : done + int(batch["valid"].sum())]
            logits[rows], features[rows] = z[: len(rows)], f[: len(rows)]
            done += len(rows)
        if row_index is not None:
            logits = average_by_row(logits, row_index, len(texts))
            features = average_by_row(features, row_index, len(texts))
        return logits, features

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits [n, num_labels] (float32) before the temperature: the network's, mixed with
        the run's n-gram model where it has a blend (``jaxcls.eval.blend``)."""
        logits = self._run(texts)[0]
        return logits if self.blend is None else self.blend.logits(logits, list(texts))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities [n, num_labels] (float32): softmax(logits / self.temperature)
        (rows sum to 1), or for a multi-label model each label's sigmoid(logit / T_label)."""
        logits = self.predict_logits(texts)
        if self.multi_label:
            return calibration.sigmoid(logits, self.temperature).astype(np.float32)
        return calibration.softmax(logits, self.temperature).astype(np.float32)

    def predict(self, texts: Sequence[str]) -> list[str] | list[list[str]]:
        """The most probable label of each text; for a multi-label model, each text's labels
        (those at or above their threshold, in label order)."""
        return self.decide(self.predict_proba(texts))

    def decide(self, probs: np.ndarray) -> list[str] | list[list[str]]:
        """``predict``'s answer from ``predict_proba``'s probabilities."""
        if not self.multi_label:
            return [self.labels[i] for i in np.argmax(probs, axis=-1)]
        chosen = apply_thresholds(probs, self.thresholds)
        return [[self.labels[c] for c in np.flatnonzero(row)] for row in chosen]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The features the contrastive loss sees [n, F] (float32)."""
        return self._run(texts)[1]
