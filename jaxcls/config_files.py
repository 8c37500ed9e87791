"""The config files: the shipped ones found by name, and every key listed with its comment.

The shipped configs are the ``configs/`` folder of a checkout, installed with the package as
``jaxcls/configs`` (pyproject.toml maps one onto the other), so ``--config margin`` works from
any directory once jaxcls is installed.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import ml_collections

from jaxcls.errors import UserError

DEFAULT = "default"
_ASSIGNMENT = re.compile(r"\s*config\.([\w.]+)\s*=")


def shipped_dir() -> Path:
    """The folder of the shipped config files: installed, or the checkout's configs/."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if (installed / f"{DEFAULT}.py").is_file() else package.parent / "configs"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob("*.py") if not p.stem.startswith("_"))


def find(spec: str) -> Path:
    """The config file that ``--config spec`` names: a path, or a shipped config's name
    (``margin``, ``margin.py``, or ``configs/margin.py`` from a directory without one)."""
    path = Path(spec)
    if path.is_file():
        return path
    names = shipped_names()
    name = path.name.removesuffix(".py")
    bare = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs")
    if bare and name in names:
        return shipped_dir() / f"{name}.py"
    raise UserError(
        f"config file {spec} not found; pass a config file or one of the shipped names: "
        f"{', '.join(names)}"
    )


def comments(source: str) -> dict[str, str]:
    """Each ``config.<key> = ...`` line's key -> the comment lines right above it, joined."""
    found, block = {}, []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = _ASSIGNMENT.match(line)
        if match:
            found.setdefault(match.group(1), " ".join(block))
        block = []
    return found


def describe(cfg: ml_collections.ConfigDict, width: int = 100) -> str:
    """Every key of ``cfg`` with its value and its comment in the shipped default.py, grouped
    and ordered as in that file (keys it does not declare come last)."""
    notes = comments((shipped_dir() / f"{DEFAULT}.py").read_text(encoding="utf-8"))
    values = dict(_leaves(cfg))
    groups = {k for k, v in _nodes(cfg) if isinstance(v, ml_collections.ConfigDict)}
    order = [k for k in notes if k in values or k in groups]
    order += [k for k in values if k not in notes]
    lines = []
    for key in order:
        if key in groups:
            lines += ["", f"{key}: {notes.get(key, '')}".rstrip()]
            continue
        lines.append(f"  --config.{key}={_show(values[key])}")
        if notes.get(key):
            lines += textwrap.wrap(
                notes[key], width, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
    return "\n".join(lines).lstrip("\n")


def _show(value: Any) -> str:
    """A value as it would be typed after ``--config.key=`` (quoted when the shell needs it)."""
    text = str(value)
    if text == "" or re.search(r"[\s'\"|*?()$\\;&<>]", text):
        return "'" + text.replace("'", "'\\''") + "'"
    return text


def _nodes(cfg: ml_collections.ConfigDict, prefix: str = ""):
    for name, value in cfg.items():
        yield f"{prefix}{name}", value
        if isinstance(value, ml_collections.ConfigDict):
            yield from _nodes(value, f"{prefix}{name}.")


def _leaves(cfg: ml_collections.ConfigDict):
    return ((k, v) for k, v in _nodes(cfg) if not isinstance(v, ml_collections.ConfigDict))
