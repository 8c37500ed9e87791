"""A trained run -> a peft LoRA adapter dir, or a merged Hugging Face checkpoint.

  python -m jaxcls.export --ckpt best --workdir runs/margin --format peft --out exported/peft
  python -m jaxcls.export --ckpt best --workdir runs/margin --format merged --out exported/hf

``peft``: ``adapter_config.json`` and ``adapter_model.safetensors`` (the LoRA factors and the
score head under peft's names), ``labels.json``, the tokenizer and the classifier's
``config.json`` (num_labels, id2label, pad_token_id); load it as the README shows:
``PeftModel.from_pretrained(Qwen3ForSequenceClassification.from_pretrained(BASE,
config=AutoConfig.from_pretrained(OUT), ignore_mismatched_sizes=True), OUT)``.
When the run's base is not a Hugging Face dir on disk (the random-init demo base, trained or
not), it is written as ``OUT/base`` and named as the adapter's base.
``merged``: a plain ``Qwen3ForSequenceClassification`` dir with LoRA folded into the kernels
(``config.json`` with id2label/label2id and pad_token_id, ``model.safetensors``, tokenizer),
for transformers or vLLM. Tensor names go through ``jaxcls.formats.hf_keys``, the converter's
table.
The projection head and the contrastive loss state are training-only and are not exported.
Both formats give the model's raw logits: the temperature a run fitted on validation
(``RUN/calibration.json``, config key eval.calibrate) is not folded in; divide the logits by its
``temperature`` (one per label for a multi-label run) before the softmax (sigmoid) for the
calibrated probabilities of ``predict.py``.
The n-gram blend (``RUN/blend.json``, config key eval.ngram_blend) is not exported either: the
export is the network alone, whose predictions are those of the run with ``--config
.eval.ngram_blend=False``; the log says when the run's predictions also mixed in the n-gram model.
A multi-label run's ``config.json`` has ``problem_type: multi_label_classification`` (so
transformers applies a sigmoid per label), and its tuned thresholds go to ``thresholds.json``,
moved to the plain sigmoid's scale (the same decisions as the calibrated probabilities at the
run's thresholds).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcls import cli
from jaxcls.config import is_multi_label
from jaxcls.eval import blend as blend_lib
from jaxcls.eval import calibration
from jaxcls.files import atomic_dir
from jaxcls.formats import hf_dir, model_dir, peft_dir, run_dir
from jaxcls.model import lora
from jaxcls.model.dtypes import DTYPES
from jaxcls.train import restore

log = logging.getLogger("jaxcls")

FORMATS = ("peft", "merged")


def _hf_base(run: Any) -> str | None:
    """The run's base as a Hugging Face dir on disk, if it is one (or was converted from one)."""
    path = Path(run.cfg.model.path) if run.cfg.model.path else None
    if run.train_base or path is None:
        return None
    if (path / model_dir.META_FILE).is_file():
        source = json.loads((path / model_dir.META_FILE).read_text()).get("source", "")
        path = Path(source)
    return str(path.absolute()) if (path / "config.json").is_file() else None


def _param_dtype(params: Any) -> str:
    return np.dtype(jax.tree_util.tree_leaves(params["model"])[0].dtype).name


def write(
    run: Any, fmt: str, out: Path, dtype: str | None = None, thresholds: list | None = None
) -> Path:
    """Write a loaded run (``restore.load_run``) as ``fmt`` (peft | merged) into ``out``,
    atomically: built in a temporary dir, renamed when complete; ``thresholds``: a
    multi-label run's per-label decision thresholds, written to ``thresholds.json``."""
    out = Path(out).absolute()
    problem = hf_dir.MULTI_LABEL if is_multi_label(run.cfg) else None
    model_dir.check_out_dir(out)
    left = [k for k in ("projection",) if k in run.trainable["params"]]
    left += [f"extra/{k}" for k in run.trainable.get("extra", {})]
    if left:
        log.info("not exported (training only): %s", ", ".join(left))
    with atomic_dir(out) as tmp:
        if fmt == "merged":
            params = jax.device_get(run.merged_params())
            dtype = dtype or _param_dtype(params)
            hf_dir.write_hf(tmp, run.config, params, run.label_names, run.tokenizer, dtype, problem)
        else:
            base = _hf_base(run)
            if base is None:
                params = jax.device_get(lora.combine(run.frozen, run.trainable["params"]))
                dtype = dtype or _param_dtype(params)
                hf_dir.write_hf(
                    tmp / "base", run.config, params, run.label_names, run.tokenizer, dtype
                )
                base = str(out / "base")
                log.info("the run's base is not a Hugging Face dir: written to %s", base)
            peft_dir.write(
                tmp, run.trainable["adapters"], run.trainable["params"]["score"]["kernel"],
                run.lora, run.frozen or run.trainable["params"], run.label_names, run.tokenizer,
                base,
            )  # fmt: skip
            # The classifier's config next to the adapter: AutoConfig.from_pretrained(out) gives
            # the base num_labels, id2label and pad_token_id (a causal-LM base has none of them).
            base_dtype = dtype or _param_dtype(run.frozen or run.trainable["params"])
            hf_dir.write_config(
                tmp, run.config, run.label_names, run.tokenizer, base_dtype, problem
            )
        if thresholds is not None:
            run_dir.save_thresholds(tmp, None, run.label_names, thresholds)
    return out


def export(workdir: Path, ckpt: str, fmt: str, out: Path, dtype: str | None = None) -> Path:
    """Load run ``workdir`` at ``ckpt`` and write it as ``fmt`` into ``out``."""
    model_dir.check_out_dir(Path(out))  # before the slow load
    # A run trained on an int8 base (model.quantize) is exported on its full-precision base,
    # re-read: LoRA merges into the original weights, and a peft base is the original.
    run, step = restore.load_run(Path(workdir), ckpt, quantize=False)
    thresholds = run_dir.load_thresholds(Path(workdir), run.label_names, step)
    if is_multi_label(run.cfg) and thresholds is None:
        log.warning(
            "no thresholds.json entry for step %d (eval.py tunes and saves them): the export "
            "has none, and predictions from it cut at 0.5", step,
        )  # fmt: skip
    temperature = run_dir.load_temperature(Path(workdir), step)
    if thresholds is not None and temperature is not None:
        # The export gives plain sigmoids: the same decisions at the uncalibrated thresholds.
        thresholds = calibration.uncalibrated_thresholds(thresholds, temperature).tolist()
    write(run, fmt, out, dtype, thresholds)
    log.info("exported %s step %d as %s to %s", workdir, step, fmt, out)
    weight = blend_lib.read_weight(Path(workdir), step)
    if weight is not None:
        log.warning(
            "the export is the network alone: the run's predictions (eval.py, predict.py) also "
            "mix in its n-gram model at weight %.2f (%s), which has no Hugging Face form",
            weight, Path(workdir) / blend_lib.BLEND,
        )  # fmt: skip
    return Path(out)


def main(argv: list[str] | None = None, prog: str = "python -m jaxcls.export") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", default="best", help="best, latest, a step, or a checkpoint path")
    parser.add_argument("--workdir", default=None, help="run directory (default: runs/LATEST)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="what to write")
    parser.add_argument("--out", required=True, help="output dir (must not exist or be empty)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="merged/base weights' dtype")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    cli.setup_logging()
    workdir, ckpt = run_dir.split_ckpt(args.workdir, args.ckpt)
    export(workdir, ckpt, args.format, Path(args.out), args.dtype)
    return 0


if __name__ == "__main__":
    cli.run_entry_point(main)
