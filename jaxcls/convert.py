"""Convert a Hugging Face Qwen3 checkpoint into a jaxcls model dir.

  python -m jaxcls.convert --hf /path/to/Qwen3-1.7B --out models/qwen3-1.7b --dtype bfloat16

Reads ``config.json`` and the weights (safetensors, sharded or not, or ``pytorch_model.bin``
with torch) one tensor at a time (``jaxcls.formats.hf_dir``), checks every name and shape, and
writes ``jaxcls_model.json`` + Orbax ``params/`` + the tokenizer atomically.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from jaxcls import cli
from jaxcls.formats import model_dir
from jaxcls.formats.hf_dir import load_hf
from jaxcls.model.dtypes import DTYPES


def convert(hf_dir: str | os.PathLike, out: str | os.PathLike, dtype: str | None = None) -> Path:
    """Convert an HF Qwen3 dir into a jaxcls model dir at ``out`` (written atomically)."""
    model_dir.check_out_dir(Path(out))  # before the slow read, not only when writing
    config, params, id2label = load_hf(hf_dir, dtype)
    return model_dir.write_model(
        out, config, params, id2label, tokenizer_dir=hf_dir, source=str(Path(hf_dir).absolute())
    )


def main(argv: list[str] | None = None, prog: str = "python -m jaxcls.convert") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert a Hugging Face Qwen3 checkpoint."
    )
    parser.add_argument("--hf", required=True, help="Hugging Face Qwen3 model dir")
    parser.add_argument("--out", required=True, help="jaxcls model dir to create")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="param dtype; default: as stored")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    cli.setup_logging()
    out = convert(args.hf, args.out, args.dtype)
    meta = json.loads((out / model_dir.META_FILE).read_text())
    labels = list((meta["id2label"] or {}).values())
    tokenizer = [f.name for f in model_dir.tokenizer_files(out)]
    print(f"wrote {out}: param_dtype {meta['param_dtype']}, labels {labels or 'none (base model)'}")
    print(f"tokenizer files: {tokenizer or 'none found in ' + str(args.hf)}")
    return 0


if __name__ == "__main__":
    cli.run_entry_point(main)
