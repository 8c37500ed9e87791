"""The PyTorch contenders (transformers + peft), built and timed inside a ``worker.Worker``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import common
import numpy as np

NUM_LABELS = 4


def _torch_setup(s: common.Shape) -> tuple[Any, Any, str]:
    """torch with one thread per core; the step's dtype and the device."""
    import torch

    torch.set_num_threads(os.cpu_count())
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s.dtype]
    return torch, dtype, "cuda" if torch.cuda.is_available() else "cpu"


def _model(s: common.Shape, attn: str, dtype: Any, device: str) -> Any:
    """A random-init ``Qwen3ForSequenceClassification`` built in place on the device."""
    import torch
    from transformers import Qwen3ForSequenceClassification

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a 1.7B model is not made in float32 on the host first
    try:
        with torch.device(device):
            return Qwen3ForSequenceClassification(common.hf_config(s, NUM_LABELS, attn))
    finally:
        torch.set_default_dtype(default)


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class Contender:
    """What both PyTorch contenders answer: the matmul peak, timed calls, memory."""

    device = "cpu"

    def matmul_peak(self, n: int) -> float:
        torch, dtype, device = _torch_setup(self.shape)
        y = torch.randn(n, n, dtype=dtype, device=device)
        return common.matmul_peak(lambda: (y @ y, _synchronize(device)), n)

    def time_calls(self, n: int) -> list[tuple[float, float]]:
        """Wall and process CPU seconds of ``n`` calls."""
        return common.time_calls(self.call, n)

    def memory(self) -> dict[str, float | None]:
        device_bytes = None
        if self.device == "cuda":
            import torch

            device_bytes = torch.cuda.max_memory_allocated()
        return {"peak_rss_mb": common.peak_rss_mb(), "device_bytes": device_bytes}

    def _pick(self, attn: str, build: Callable[[str], Callable[[], Any]]) -> str:
        """``attn``, or with "auto" the faster of sdpa and eager (best of two calls each)."""
        if attn != "auto":
            self.call = build(attn)
            return attn
        trial = {}
        for name in ("sdpa", "eager"):
            fn = build(name)
            fn()
            trial[name] = min(common.timed(fn) for _ in range(2))
        print("torch attention trial: " + ", ".join(f"{k} {v:.3f} s" for k, v in trial.items()))
        attn = min(trial, key=trial.get)
        self.call = build(attn)
        return attn


class TrainStep(Contender):
    """peft LoRA (same rank, alpha, dropout, targets), cross-entropy, AdamW with clipping."""

    def __init__(self, s: common.Shape, attn: str = "auto") -> None:
        self.shape = s
        _, _, self.device = _torch_setup(s)
        self.attn = self._pick(attn, self._build)
        for _ in range(3):  # warm-up: the first steps are several times slower
            self.call()

    def info(self) -> dict[str, Any]:
        return {"attn": self.attn, "trainable": self.trainable}

    def _build(self, attn: str) -> Callable[[], None]:
        from peft import LoraConfig, get_peft_model

        torch, dtype, device = _torch_setup(self.shape)
        s = self.shape
        lora_cfg = LoraConfig(
            task_type="SEQ_CLS", r=s.rank, lora_alpha=common.ALPHA, lora_dropout=s.dropout,
            target_modules=list(common.TARGETS),
        )  # fmt: skip
        model = get_peft_model(_model(s, attn, dtype, device), lora_cfg)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        fused = device == "cuda" or dtype == torch.float32
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01, fused=fused)
        host = common.random_batch(s, NUM_LABELS)
        batch = {k: torch.as_tensor(v, dtype=torch.long).to(device) for k, v in host.items()}

        def step() -> None:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _synchronize(device)

        return step


class Predict(Contender):
    """The fast tokenizer and ``Qwen3ForSequenceClassification`` under ``inference_mode``."""

    def __init__(self, s: common.Shape, tokenizer_dir: str, texts: list[str], attn: str) -> None:
        from transformers import AutoTokenizer

        self.shape, self.texts = s, texts
        _, _, self.device = _torch_setup(s)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.tokenizer.padding_side = "right"
        self.attn = self._pick(attn, self._build)
        self.call()

    def info(self) -> dict[str, Any]:
        return {"attn": self.attn}

    def _build(self, attn: str) -> Callable[[], np.ndarray]:
        torch, dtype, device = _torch_setup(self.shape)
        s, tokenizer = self.shape, self.tokenizer
        model = _model(s, attn, dtype, device).eval()
        model.config.pad_token_id = tokenizer.pad_token_id

        def predict() -> np.ndarray:
            out = []
            with torch.inference_mode():
                for i in range(0, len(self.texts), s.batch):
                    enc = tokenizer(
                        self.texts[i : i + s.batch], truncation=True, max_length=s.seq,
                        padding=True, return_tensors="pt",
                    ).to(device)  # fmt: skip
                    logits = model(**enc).logits.float()
                    out.append(torch.softmax(logits, dim=-1).cpu().numpy())
            return np.concatenate(out)

        return predict
