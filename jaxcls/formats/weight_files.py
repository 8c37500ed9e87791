"""Weight files: safetensors read and written one tensor at a time, and pytorch_model.bin.

A Qwen3-1.7B checkpoint is 3.4 GB in bfloat16: every tensor is read into (or written from) one
buffer of its own, so a conversion never holds a second copy of the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jaxcls.errors import UserError

# safetensors dtype codes of the floating-point tensors a Qwen3 checkpoint holds.
ST_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64}
_ST_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
# Tells a reader which tensors to read: ``select(name, shape) -> bool``.
Select = Callable[[str, tuple[int, ...]], bool]
# (name, shape, dtype, make): a tensor to write, computed only when its turn comes.
Entry = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def read_all(name: str, shape: tuple[int, ...]) -> bool:
    """A ``Select`` that reads every tensor."""
    return True


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: not a safetensors file (bad header)") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path: Path, select: Select) -> Iterator[tuple[str, np.ndarray]]:
    """Tensors whose name ``select(name, shape)`` accepts, each read into one fresh array.

    The library's NumPy backend cannot return bfloat16 and its mmap keeps every touched page
    resident, so tensors are read with ``readinto`` straight into their final buffer.
    """
    header, start = safetensors_header(path)
    with open(path, "rb") as f:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            shape = tuple(info["shape"])
            if not select(name, shape):
                continue
            dtype = ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise UserError(f"{path}: tensor {name} has dtype {info['dtype']}; need a float")
            begin, end = info["data_offsets"]
            array = np.empty(shape, dtype)
            if array.nbytes != end - begin:
                raise UserError(f"{path}: tensor {name} has a corrupt size; re-download it")
            f.seek(start + begin)
            if f.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
                raise UserError(f"{path}: truncated at tensor {name}; re-download it")
            yield name, array


def read_torch_bin(path: Path, select: Select) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path}: reading pytorch_model.bin needs torch; pip install torch, or convert the "
            "checkpoint to safetensors"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for name in list(state):
        tensor = state.pop(name)
        if not select(name, tuple(tensor.shape)):
            continue
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: reinterpret the bits.
            yield name, tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            yield name, tensor.numpy()


def read_weights(path: Path, select: Select = read_all) -> Iterator[tuple[str, np.ndarray]]:
    """``read_safetensors`` or, for a ``.bin`` file, ``read_torch_bin``."""
    reader = read_torch_bin if path.suffix == ".bin" else read_safetensors
    return reader(path, select)


def write_safetensors(path: Path, entries: Iterable[Entry]) -> None:
    """Write a safetensors file one tensor at a time (no second copy of the model)."""
    entries = list(entries)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, _ in entries:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        code = _ST_CODES[np.dtype(dtype).name]
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape, dtype, make in entries:
            array = np.ascontiguousarray(make(), dtype=dtype)
            assert array.shape == tuple(shape), (name, array.shape, shape)
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
