"""What every entry point shares: quiet logging, Ctrl-C, config flags, and UserError -> exit 2."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from jaxcls import interrupts
from jaxcls.errors import UserError
from jaxcls.runtime import tune_malloc

EXIT_USER_ERROR = 2
# OS errors that are the machine's state, not a bug: a full disk or quota, a file-size limit,
# missing permissions or a read-only filesystem.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS
}  # fmt: skip


# Log records that say nothing to a user of jaxcls: (logger, fragment of the message).
QUIET = (
    ("transformers", "PyTorch was not found"),  # jaxcls needs only transformers' tokenizers
    ("absl", "Skipping merge of OCDBT checkpoints"),  # Orbax, single-process saves: nothing to do
)


class _Drop(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in str(record.msg)


def setup_logging() -> None:
    """INFO from jaxcls on stderr, warnings from the libraries, without their known noise.

    Call it before the libraries are imported: the filters sit on their loggers."""
    # force: a library may have configured the root logger while being imported.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("absl", "jax._src", "orbax", "httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name, fragment in QUIET:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_Drop(fragment))


def run_entry_point(main: Callable[[], int | None]) -> None:
    """``run(main)`` for a command-line entry point: process settings first, then ``main``.

    Before anything heavy: malloc tuning; Ctrl-C (and SIGTERM) exit at once with one line,
    code 130 (143), until the training loop takes them over (``jaxcls.interrupts``)."""
    tune_malloc()  # before any thread starts, JAX's CPU client's included
    interrupts.install()
    try:
        run(main)
    finally:
        interrupts.uninstall()


def run(main: Callable[[], int | None], argv: Sequence[str] | None = None) -> None:
    """Call ``main``; a UserError prints ``error: ...`` and exits 2 (traceback with --debug)."""
    argv = sys.argv if argv is None else argv
    debug = "--debug" in argv or os.environ.get("JAXCLS_DEBUG") == "1"
    try:
        code = main()
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as e:
        if debug or e.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(
            f"error: {e.filename or 'a file'}: {e.strerror}; free disk space or fix permissions, "
            "then re-run the same command (training resumes from its last complete checkpoint)",
            file=sys.stderr,
        )
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code or 0)


def config_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The ``--config FILE`` value and the ``--config.key=value`` overrides in ``argv``."""
    path, overrides = None, []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            key_value = arg[len("--config.") :]
            if "=" not in key_value and i + 1 < len(args):
                key_value = f"{key_value}={args[i + 1]}"
            overrides.append(key_value)
    return path, overrides
