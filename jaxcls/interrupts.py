"""Ctrl-C and SIGTERM: exit at once with one line, or, in the training loop, stop after the step.

Python runs a signal handler only between two bytecodes of the main thread. While the main
thread is inside XLA (compiling a step can take minutes) the handler waits for it, and a
KeyboardInterrupt raised there, or in one of JAX's gc callbacks, unwinds through code that
cannot take it (a traceback, then a segfault). So an entry point calls ``install()``: each
signal's number is written to a pipe by the C-level handler (``signal.set_wakeup_fd``) and a
watcher thread acts on it at once, whatever the main thread is doing:

- no ``StopFlag`` ready (start-up, compiling, the final evaluation, eval, predict...): run the
  registered cleanups, print one line, ``os._exit(128 + signum)`` (130 for Ctrl-C);
- a ``StopFlag`` ready (the training loop, after its first step): set the flag and say so at
  once; the loop saves a checkpoint after the step it is in. A second Ctrl-C exits at once
  (the last complete checkpoint stays; a cut save is removed by the next run).

Without ``install()`` (the library used in-process, e.g. in tests) a ``StopFlag`` sets plain
Python handlers of its own, ready from the start.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from tqdm.std import tqdm as std_tqdm

SIGNALS = (signal.SIGINT, signal.SIGTERM)
ACK = "stopping after this step; saving a checkpoint... (Ctrl-C again to quit without saving)"


class _Watcher:
    """The process's signal watcher: the active StopFlag and the cleanups of an early exit."""

    def __init__(self) -> None:
        self.installed = False
        self.flag: StopFlag | None = None
        self.cleanups: list[Callable[[], str | None]] = []
        self.restore: tuple[dict, int, int] | None = None  # old handlers, old wakeup fd, our fd


_WATCHER = _Watcher()


def install() -> None:
    """Route SIGINT/SIGTERM to the watcher thread (main thread only; once per process)."""
    if _WATCHER.installed or threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    # A Python handler for each, so that the C-level handler writes the signal to the pipe.
    old = {sig: signal.signal(sig, _noop) for sig in SIGNALS}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    thread = threading.Thread(target=_watch, args=(read_fd,), name="jaxcls-signals", daemon=True)
    thread.start()
    _WATCHER.installed, _WATCHER.restore = True, (old, old_fd, write_fd)


def uninstall() -> None:
    """Undo ``install()`` (an entry point run inside another program, e.g. a test, returns)."""
    if not _WATCHER.installed:
        return
    old, old_fd, write_fd = _WATCHER.restore
    signal.set_wakeup_fd(old_fd)
    for sig, handler in old.items():
        signal.signal(sig, handler)
    os.close(write_fd)  # the watcher reads the end of the pipe and returns
    _WATCHER.__init__()


def on_exit(cleanup: Callable[[], str | None]) -> None:
    """Run ``cleanup()`` when a signal exits the process early; it may return a note for the
    exit line. It runs on the watcher thread while the main thread may be anywhere: it must
    be quick, import nothing and only touch the filesystem."""
    _WATCHER.cleanups.append(cleanup)


def _noop(signum, frame) -> None:
    pass


def _watch(read_fd: int) -> None:
    with open(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(64):
            for signum in chunk:
                _on_signal(signum)


def _on_signal(signum: int) -> None:
    if signum not in SIGNALS:  # another handler's signal (the pipe gets them all): not ours
        return
    flag = _WATCHER.flag
    if flag is None or not flag.is_ready:
        exit_now(signum)
    elif flag.signum is None:
        flag.signum = signum
        _say("\n" + ACK)
    elif signum == signal.SIGINT:
        exit_now(signum, "quit without saving; the last complete checkpoint is kept")


def exit_now(signum: int, note: str = "") -> None:
    """Run the cleanups, print one line and end the process with 128 + signum."""
    notes = [note] if note else []
    for cleanup in _WATCHER.cleanups:
        try:
            notes.append(cleanup() or "")
        except Exception as e:  # a cleanup must not keep the process from exiting
            notes.append(f"cleanup failed: {e}")
    name = signal.Signals(signum).name
    line = "; ".join([f"interrupted by {name}: exiting", *filter(None, notes)])
    _say(("\n" if _progress_bar_shown() else "") + line)
    os._exit(128 + signum)


def _progress_bar_shown() -> bool:
    """Whether a tqdm bar is open: its line has no end yet, so ours must start a new one."""
    try:
        return any(not bar.disable for bar in list(std_tqdm._instances))
    except (AttributeError, RuntimeError):  # no bar made yet; the set changed while copied
        return False


def _say(line: str) -> None:
    os.write(2, (line + "\n").encode())


class StopFlag:
    """SIGINT/SIGTERM ask the training loop to stop after its step; it then saves and returns.

    Under an entry point (``install()``) the flag takes signals once ``ready()`` is called:
    the loop calls it after its first step, which compiles and cannot be interrupted; before
    that, a signal exits at once. Without ``install()`` it is ready from the start.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.is_ready = not _WATCHER.installed
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        if _WATCHER.installed:
            _WATCHER.flag = self
            return self
        for sig in SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._set)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def ready(self) -> None:
        self.is_ready = True

    def _set(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: quit without saving
        if self.signum is None:
            _say("\n" + ACK)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        if _WATCHER.flag is self:
            _WATCHER.flag = None
        for sig, old in self._old.items():
            signal.signal(sig, old)
