"""Train a classifier: python train.py --config configs/margin.py [--config.key=value ...]"""

import sys

from absl import flags
from ml_collections import config_flags

from jaxcls import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (see configs/); override keys with --config.key=value.",
    lock_config=True,
)  # fmt: skip
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config workdir).")
flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")


def main() -> int:
    cli.setup_logging()
    cli.parse_config_flags(sys.argv)
    from jaxcls.evaluate_run import evaluate_after_training
    from jaxcls.train.distributed import maybe_initialize
    from jaxcls.train.trainer import train_and_evaluate

    cfg = _CONFIG.value
    maybe_initialize(cfg)
    result = train_and_evaluate(cfg, _WORKDIR.value)
    if result["status"] != "interrupted":
        evaluate_after_training(cfg, result["workdir"])
    return 0


if __name__ == "__main__":
    cli.run_entry_point(main)
