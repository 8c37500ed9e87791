"""Train a classifier: python train.py --config configs/margin.py [--config.key=value ...]

The same as the installed ``jaxcls train`` (jaxcls/commands/train.py); --help lists every
config key with its value and meaning.
"""

import sys

from jaxcls.__main__ import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog="python train.py")
