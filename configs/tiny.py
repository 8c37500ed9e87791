"""A very small random-init model and a few steps, for tests and CPU smoke runs.

  python train.py --config configs/tiny.py --config.data.train=train.xlsx \
      --config.data.val=val.xlsx
"""

from pathlib import Path

import ml_collections

from jaxcls.config import load_config


def get_config() -> ml_collections.ConfigDict:
    """Returns default.py shrunk to a model and a run that take seconds."""
    config = load_config(Path(__file__).with_name("default.py"))
    config.name = "tiny"
    config.model.preset = "tiny"
    config.model.hidden_size = 64
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 16
    config.model.intermediate_size = 128
    config.lora.rank = 4
    config.lora.alpha = 8.0
    config.data.max_length = 32
    config.data.max_train_samples = 64
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 0
    config.optim.warmup_ratio = 0.0
    config.pretrain.epochs = 0  # tests that pretrain turn it on
    config.eval.ngram_blend = False  # the network alone; tests of the blend turn it on
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.max_steps = 4
    config.train.log_every = 1
    config.train.eval_every = 2
    return config
