"""TF-IDF + logistic regression on the demo split: the bar the default run is held to.

python benchmarks/demo_baseline.py    # prints test accuracy and macro-F1 as JSON
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compare_losses import tfidf_baseline  # noqa: E402

if __name__ == "__main__":
    demo = argparse.Namespace(
        max_train_samples=None, steps=None, epochs=None, train="", val="", test="",
        override=[], workdir="runs/demo_baseline",
    )  # fmt: skip
    print(json.dumps(tfidf_baseline(demo, seed=0)))
