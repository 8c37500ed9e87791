"""Evaluate a trained run: python eval.py --ckpt best [--workdir RUN] [--data FILE]

The same as the installed ``jaxcls eval`` (jaxcls/commands/eval.py); see --help.
"""

import sys

from jaxcls.__main__ import main

if __name__ == "__main__":
    main(["eval", *sys.argv[1:]], prog="python eval.py")
