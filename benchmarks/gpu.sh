#!/usr/bin/env bash
# The GPU checks of issues 8 and 16, in one call on a lent machine (one H100 or H200; JAX with CUDA,
# PyTorch, transformers and peft installed; nothing is downloaded):
#
#   bash benchmarks/gpu.sh    # writes $OUT/gpu_train_step.log and $OUT/gpu_real_size.log (or ./)
#
# Qwen3-1.7B's shape with random init, bfloat16, batch x seq = 8 x 512, LoRA rank 16 on all
# seven projections: the jaxcls training step against transformers + peft (sdpa attention,
# fused AdamW), alternating in one process. Prints step time, tokens/s, MFU against the bf16
# matmul peak measured in the same run, and peak device memory of each side; the last line is
# the JSON summary. Targets: MFU >= 45% and >= 1.3x transformers + peft. Then
# benchmarks/real_size.py on the Qwen3-1.7B shape: a random bf16 HF checkpoint built and
# converted (cached under $JAXCLS_CACHE), train.py and eval.py on it with their peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# jaxcls from this checkout, installed or not (the torch worker process inherits this too).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import jaxcls.train.steps, jaxcls.model.classifier, jaxcls.config, torch, transformers, peft" || {
  echo "gpu.sh: a package above is missing here; pip install -e '.[test]' first" >&2; exit 2; }
# JAX and PyTorch share the card: no preallocation of 75% by JAX.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, torch.cuda.get_device_name())"
# 2 rounds of 4 steps each side; the 290 s limit leaves room for compiling (the layers are
# scanned: one layer compiled; not yet measured on a GPU).
timeout 290 python benchmarks/train_step.py --preset qwen3-1.7b --torch --torch-attn sdpa \
  --rounds 2 --steps 4 2>&1 | grep -v -i "warn" | tee "$out/gpu_train_step.log"
timeout 400 python benchmarks/real_size.py --shape 1.7b --table-shapes 1.7b 2>&1 \
  | grep -v -i "warn" | tee "$out/gpu_real_size.log"
