"""What every entry point shares: logging, config flags, and UserError -> exit 2."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from absl import flags

from jaxcls.config import load_config
from jaxcls.errors import UserError
from jaxcls.runtime import tune_malloc

EXIT_USER_ERROR = 2
# OS errors that are the machine's state, not a bug: a full disk or quota, a file-size limit,
# missing permissions or a read-only filesystem.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS
}  # fmt: skip


def setup_logging() -> None:
    # force: a library may have configured the root logger while being imported.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("absl", "jax._src", "orbax", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_entry_point(main: Callable[[], int | None]) -> None:
    """``run(main)`` for a command-line entry point: process settings first, then ``main``."""
    tune_malloc()  # before anything starts JAX's CPU client
    run(main)


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


def parse_config_flags(argv: Sequence[str]):
    """Parse absl flags (``config_flags.DEFINE_config_file``, locked) with clear errors.

    Our own loader checks the config file and every override first, so a missing file, a
    mistyped key or a value of the wrong type is a one-line UserError (with a suggestion)
    instead of an absl traceback.
    """
    path, overrides = config_args(argv[1:])
    if path is None:
        raise UserError("missing --config; e.g. python train.py --config configs/margin.py")
    load_config(path, overrides)
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        raise UserError(str(e).splitlines()[0]) from None
