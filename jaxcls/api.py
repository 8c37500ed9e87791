"""``Classifier``: load a model and predict labels, probabilities and features for texts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.data import batches
from jaxcls.data import tokenizer as tokenizer_lib
from jaxcls.data.long_text import average_by_row
from jaxcls.errors import UserError
from jaxcls.eval import calibration
from jaxcls.formats import model_dir, peft_dir, run_dir
from jaxcls.model import layerstack
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
        long_text: str = "truncate",
        window_stride: int = 0,
        temperature: float = 1.0,
    ) -> None:
        """``long_text``, ``window_stride``: as the config keys data.*; ``temperature``: the
        probabilities are softmax(logits / temperature) (a run's calibration.json)."""
        if len(labels) != head.num_labels:
            raise ValueError(f"{len(labels)} labels for a head of {head.num_labels} classes")
        self.config, self.head, self.labels = config, head, list(labels)
        self.tokenizer, self.max_length, self.template = tokenizer, max_length, template
        self.batch_size, self.long_text, self.window_stride = batch_size, long_text, window_stride
        self.temperature = float(temperature)
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
    ) -> Classifier:
        """Load from a converted jaxcls model dir, a Hugging Face seq-cls dir, a training run
        dir, or a peft LoRA adapter dir on ``base`` (default: its base_model_name_or_path).

        ``dtype`` is the compute dtype: default float32 on CPU, bfloat16 on accelerators.
        ``ckpt`` (best | latest | step | path) selects the checkpoint of a training run dir.
        """

        path = Path(path)
        dtype = dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
        # The one place that dispatches on the kind of path: a training run dir (with
        # checkpoints/ and `ckpt`), a peft adapter dir, or a model dir (converted or HF).
        if (path / "checkpoints").is_dir():
            return cls._from_run(path, ckpt, dtype, batch_size)
        if peft_dir.is_adapter_dir(path):
            loaded = peft_dir.load_merged(path, base)
            return cls._from_loaded(loaded, path, dtype, max_length, batch_size)
        if base is not None:
            raise UserError(f"{path}: not a peft adapter dir (no adapter_config.json); drop base")
        return cls._from_loaded(model_dir.read_model(path), path, dtype, max_length, batch_size)

    @classmethod
    def _from_run(cls, path: Path, ckpt: str, dtype: str, batch_size: int) -> Classifier:
        """A training run at checkpoint ``ckpt``, with LoRA merged into plain kernels and the
        run's temperature when it was fitted on this checkpoint."""
        run, step = restore.load_run(path, ckpt)
        head = dataclasses.replace(run.model.head, dtype=dtype, remat=False)
        long_text, stride = run_model.long_text_settings(run.cfg.data)
        return cls(
            run.config,
            head,
            run.merged_params(),
            run.tokenizer,
            run.label_names,
            max_length=run.cfg.data.max_length,
            template=run.cfg.data.template,
            batch_size=batch_size,
            long_text=long_text,
            window_stride=stride,
            temperature=run_dir.load_temperature(path, step) or 1.0,
        )

    @classmethod
    def _from_loaded(
        cls, loaded: Any, path: Path, dtype: str, max_length: int, batch_size: int
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
        return cls(
            loaded.config, head, loaded.params, tokenizer, labels, max_length, batch_size=batch_size
        )

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
        """Raw (uncalibrated) logits [n, num_labels] (float32)."""
        return self._run(texts)[0]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities [n, num_labels]: float32 softmax(logits / self.temperature)."""
        return calibration.softmax(self._run(texts)[0], self.temperature).astype(np.float32)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label of each text."""
        return [self.labels[i] for i in np.argmax(self.predict_logits(texts), axis=-1)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The features the contrastive loss sees [n, F] (float32)."""
        return self._run(texts)[1]
