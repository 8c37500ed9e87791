"""The ``jaxcls`` command (also ``python -m jaxcls``): jaxcls COMMAND [flags]; COMMAND --help.

train.py, eval.py and predict.py of a checkout call ``main`` too.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from jaxcls import interrupts
from jaxcls.runtime import tune_malloc

# command -> (module with main(argv, prog), what it does); imported only when run, after the
# entry point's set-up, so that a command's checks run before JAX loads.
COMMANDS = {
    "train": ("jaxcls.commands.train", "fine-tune a classifier as a config says"),
    "eval": ("jaxcls.commands.eval", "evaluate a run or a peft adapter on a labelled file"),
    "predict": ("jaxcls.commands.predict", "classify texts or a file"),
    "convert": ("jaxcls.convert", "Hugging Face Qwen3 checkpoint -> jaxcls model dir"),
    "export": ("jaxcls.export", "a run -> peft adapter or merged Hugging Face dir"),
}
EXIT_USER_ERROR = 2


def usage() -> str:
    lines = ["usage: jaxcls COMMAND [flags]   (jaxcls COMMAND --help for its flags)", ""]
    lines += [f"  {name:<8} {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "e.g. jaxcls train --config margin; jaxcls train --help lists every config key"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Run ``argv`` = [COMMAND, flags...] (default: the command line) and exit with its code."""
    tune_malloc()  # before any thread starts (jaxcls.runtime)
    interrupts.install()  # then at once: Ctrl-C during the imports below exits cleanly too
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if not argv or argv[0] in ("-h", "--help"):
            print(usage(), file=sys.stdout if argv else sys.stderr)
            sys.exit(0 if argv else EXIT_USER_ERROR)
        name, rest = argv[0], argv[1:]
        if name not in COMMANDS:
            print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        from jaxcls import cli

        module = importlib.import_module(COMMANDS[name][0])
        cli.run_entry_point(lambda: module.main(rest, prog or f"jaxcls {name}"))
    finally:
        interrupts.uninstall()  # when run inside another program (a test) that goes on


if __name__ == "__main__":
    main()
