"""Classify texts: python predict.py --text "..." | --input FILE [--output FILE] [--top_k K]

The same as the installed ``jaxcls predict`` (jaxcls/commands/predict.py); see --help.
"""

import sys

from jaxcls.__main__ import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]], prog="python predict.py")
