"""The int8 frozen base (``model.quantize = "int8"``): weight bytes and probability change.

    PYTHONPATH=. python benchmarks/int8_base.py

1. Bytes of the frozen base of each Qwen3 size in bf16 and int8, from abstract shapes
   (``jax.eval_shape``: nothing allocated): the projection kernels, and the whole base (the
   embedding table stays bf16).
2. On tiny random Qwen3 seq-cls models (bf16 weights, the Qwen tokenizer, 400 random texts):
   the largest change of a class probability and the share of unchanged argmax, int8 base
   against the bf16 base (both float32 compute), beside what bf16 compute alone changes, and
   the largest top-two probability gap (bf16 model) among the texts whose argmax changed.
   ``init=hf``: transformers' Qwen3 initialisation (std 0.02) with a score head of std 0.15;
   ``init=0.15``: std 0.15 everywhere, as tests/conftest.py's models (a harsher network).
The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_size import SHAPES, qwen3_config  # noqa: E402

from jaxcls import Classifier  # noqa: E402
from jaxcls.data.demo import qwen_tokenizer_dir  # noqa: E402
from jaxcls.model import quant  # noqa: E402
from jaxcls.model.dtypes import DTYPES  # noqa: E402
from jaxcls.model.qwen3 import Qwen3Model  # noqa: E402

WORDS = "the movie was great terrible plot food slow 电影 非常 好看 失望 价格 便宜 客服".split()


def base_bytes(shape: str) -> dict[str, float]:
    """GB of the bf16 and int8 base of a Qwen3 size: all of it, and its projection kernels."""
    model = Qwen3Model(qwen3_config(shape), param_dtype=DTYPES["bfloat16"])
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    bf16 = {"model": jax.eval_shape(model.init, jax.random.key(0), ids, ids)["params"]}
    int8 = jax.eval_shape(quant.quantize_params, bf16)
    kernels = lambda p: {k: v for k, v in p["model"].items() if k.startswith("layers")}  # noqa: E731
    gb = lambda p: round(quant.weight_bytes(p) / 1e9, 3)  # noqa: E731
    return {
        "bf16_gb": gb(bf16), "int8_gb": gb(int8),
        "layers_bf16_gb": gb(kernels(bf16)), "layers_int8_gb": gb(kernels(int8)),
    }  # fmt: skip


def tiny_model(init: str, out: Path) -> Path:
    """A saved tiny bf16 ``Qwen3ForSequenceClassification`` (3 classes)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=88, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_labels=3,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForSequenceClassification(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0.0, 0.15)
            elif init != "hf" and name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif init != "hf":
                p.normal_(0.0, float(init))
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def probability_change(hf_dir: Path, n: int = 400) -> dict[str, float]:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in range(n)]
    want = Classifier.load(hf_dir, batch_size=n).predict_proba(texts)
    result = {}
    for name, kw in (("int8", {"quantize": "int8"}), ("bf16_compute", {"dtype": "bfloat16"})):
        got = Classifier.load(hf_dir, batch_size=n, **kw).predict_proba(texts)
        result[f"{name}_max_abs"] = round(float(np.abs(got - want).max()), 4)
        flipped = got.argmax(1) != want.argmax(1)
        result[f"{name}_same_argmax"] = 1.0 - float(np.mean(flipped))
        # How close to a tie the flipped texts were: the bf16 model's top-two gap.
        top2 = np.sort(want[flipped], axis=1)[:, -2:]
        result[f"{name}_flip_max_gap"] = round(float(np.max(top2[:, 1] - top2[:, 0], initial=0)), 4)
    return result


def main() -> None:
    result: dict = {"bytes": {}, "probabilities": {}}
    for shape in SHAPES:
        result["bytes"][shape] = b = base_bytes(shape)
        print(f"{shape}: base {b['bf16_gb']} -> {b['int8_gb']} GB, layers "
              f"{b['layers_bf16_gb']} -> {b['layers_int8_gb']} GB", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for init in ("hf", "0.15"):
            p = probability_change(tiny_model(init, Path(tmp) / init))
            result["probabilities"][f"init={init}"] = p
            print(f"init={init}: {p}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
