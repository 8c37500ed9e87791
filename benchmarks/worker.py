"""Run one contender in a spawned process, so the two frameworks share no process state.

Each framework then runs with its own defaults: jaxcls with the malloc settings its entry
points apply (``jaxcls.runtime.tune_malloc``, process-wide), PyTorch with glibc's defaults
and its own thread pool, as a PyTorch user runs it. The parent still alternates the two.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from typing import Any


def _serve(conn: Any, factory: Callable[..., Any], args: tuple) -> None:
    try:
        obj = factory(*args)
        conn.send(("ok", None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while (request := conn.recv()) is not None:
        method, method_args = request
        try:
            conn.send(("ok", getattr(obj, method)(*method_args)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Worker:
    """``factory(*args)`` built in a fresh interpreter; ``call(name, ...)`` runs its methods."""

    def __init__(self, factory: Callable[..., Any], *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, factory, args), daemon=True)
        self._proc.start()
        self._reply()

    def call(self, method: str, *args: Any) -> Any:
        self._conn.send((method, args))
        return self._reply()

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(timeout=30)

    def _reply(self) -> Any:
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"worker process failed:\n{value}")
        return value
