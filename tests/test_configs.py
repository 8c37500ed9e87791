"""Config files, overrides, validation and the one-comment-per-key rule of configs/default.py."""

import ast
import json
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from jaxcls.config import (
    config_from_json,
    config_to_json,
    flat_keys,
    load_config,
    parse_focal_alpha,
    resolve_workdir,
    validate_config,
)
from jaxcls.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT = CONFIGS / "default.py"
VARIANTS = sorted(p for p in CONFIGS.glob("[!_]*.py") if p.name != "default.py")
# The stable key names from DESIGN.md that scripts and users rely on.
DESIGN_KEYS = """workdir devices seed model.path model.preset model.dtype model.param_dtype
model.pooling model.feature_layer model.projection_dim model.remat lora.rank lora.alpha
lora.dropout lora.targets lora.rslora lora.init_from loss.classification loss.focal_gamma
loss.focal_alpha loss.label_smoothing contrastive.loss contrastive.weight contrastive.temperature
contrastive.base_temperature contrastive.focal_gamma contrastive.margin contrastive.scope
contrastive.warmup_steps contrastive.ramp_steps data.train data.val data.test data.text_column
data.label_column data.max_length data.template data.sampler optim.lr optim.weight_decay
optim.warmup_steps optim.grad_clip optim.accumulate train.batch_size train.epochs train.max_steps
train.log_every train.eval_every train.best_metric train.patience train.keep_best train.resume
train.max_bad_steps""".split()


def _leaf_types(cfg):
    return {key: type(_get(cfg, key)) for key in flat_keys(cfg)}


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("path", [DEFAULT, *VARIANTS], ids=lambda p: p.stem)
def test_every_config_loads_and_validates(path):
    cfg = load_config(path)
    validate_config(cfg)
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.stem)
def test_variants_only_change_existing_keys(path):
    assert _leaf_types(load_config(path)) == _leaf_types(load_config(DEFAULT))


def test_loss_variants_pick_their_losses():
    picked = {p.stem: load_config(p) for p in VARIANTS}
    assert (picked["ce"].loss.classification, picked["ce"].contrastive.loss) == ("ce", "none")
    assert (picked["focal"].loss.classification, picked["focal"].contrastive.loss) == (
        "focal",
        "none",
    )
    assert picked["simple"].contrastive.loss == "simple"
    assert picked["margin"].contrastive.loss == "margin"
    assert picked["tiny"].model.hidden_size < load_config(DEFAULT).model.hidden_size


def test_default_declares_every_key_once_with_a_comment_above():
    lines = DEFAULT.read_text(encoding="utf-8").splitlines()
    assigned = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            dotted = ast.unparse(node.targets[0])
            assert dotted.startswith("config."), dotted
            assigned.append(dotted.removeprefix("config."))
            above = lines[node.lineno - 2].strip()
            assert above.startswith("#"), (
                f"configs/default.py:{node.lineno} {dotted} has no comment"
            )
    leaves = list(flat_keys(load_config(DEFAULT)))
    assert len(assigned) == len(set(assigned)), "a key is assigned twice"
    assert set(leaves) <= set(assigned)
    assert set(DESIGN_KEYS) <= set(leaves)


def test_overrides_are_parsed_to_the_declared_type():
    cfg = load_config(
        DEFAULT,
        [
            "--config.contrastive.temperature=0.07",
            "train.batch_size=8",
            "model.remat=true",
            "optim.lr=1",
            "data.train=my file.xlsx",
        ],
    )
    assert cfg.contrastive.temperature == 0.07
    assert cfg.train.batch_size == 8 and isinstance(cfg.train.batch_size, int)
    assert cfg.model.remat is True
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.train == "my file.xlsx"


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.batch_size=abc", ["train.batch_size", "int", "abc"]),
        ("train.batch_size=2.5", ["train.batch_size", "int"]),
        ("model.remat=maybe", ["model.remat", "bool"]),
        ("optim.lr=fast", ["optim.lr", "float"]),
        ("train.batchsize=3", ["unknown config key 'train.batchsize'", "'train.batch_size'"]),
        ("contrastive.temprature=0.1", ["did you mean 'contrastive.temperature'"]),
        ("model=x", ["'model' is a group"]),
        ("train.batch_size", ["key=value"]),
    ],
)
def test_bad_overrides_raise_user_errors_naming_the_key(override, words):
    with pytest.raises(UserError) as error:
        load_config(DEFAULT, [override])
    for word in words:
        assert word in str(error.value)


def _parse_flags(argv):
    values = flags.FlagValues()
    # sys_argv: config_flags reads the config path from the command line before parsing.
    config_flags.DEFINE_config_file("cfg", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.cfg


def test_config_flags_loads_variants_and_rejects_mistyped_keys():
    margin = f"--cfg={CONFIGS / 'margin.py'}"
    cfg = _parse_flags(["prog", margin, "--cfg.contrastive.temperature=0.07"])
    assert (cfg.contrastive.temperature, cfg.contrastive.loss) == (0.07, "margin")
    # config_flags raises an AttributeError carrying its own "Did you mean" hint.
    with pytest.raises(AttributeError, match="Did you mean .batch_size"):
        _parse_flags(["prog", margin, "--cfg.train.batchsize=3"])


@pytest.mark.parametrize(
    "key",
    [
        "model.preset",
        "model.dtype",
        "model.pooling",
        "loss.classification",
        "contrastive.loss",
        "contrastive.scope",
        "contrastive.schedule",
        "contrastive.temperature_schedule",
        "data.sampler",
        "train.best_mode",
    ],
)
def test_validate_rejects_unknown_choices(key):
    cfg = load_config(DEFAULT, [f"{key}=bogus"])
    with pytest.raises(UserError, match=key.replace(".", r"\.") + ".*bogus.*choose one of"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.batch_size=0"], "train.batch_size"),
        (["lora.rank=0"], "lora.rank"),
        (["contrastive.temperature=0"], "contrastive.temperature"),
        (["contrastive.temperature=nan"], "contrastive.temperature"),
        (["contrastive.weight=-1"], "contrastive.weight"),
        (["lora.dropout=1.0"], "lora.dropout"),
        (["loss.label_smoothing=-0.1"], "loss.label_smoothing"),
        (["optim.lr=-1e-3"], "optim.lr"),
        (["optim.warmup_ratio=1.5"], "optim.warmup_ratio"),
        (["train.evals_per_epoch=0"], "train.evals_per_epoch"),
        (["contrastive.schedule=linear"], "contrastive.ramp_steps"),
        (
            ["contrastive.temperature_schedule=learnable", "contrastive.temperature=5"],
            "temperature",
        ),
        (["contrastive.temperature_min=2"], "temperature_min"),
        (["model.feature_layer=99"], "model.feature_layer"),
        (["model.feature_layer=-4"], "model.feature_layer"),
        (["model.num_heads=5"], "model.num_kv_heads"),
        (["devices=0,a"], "devices"),
        (["lora.targets=(q_proj"], "lora.targets"),
        (["data.template=no placeholder"], "data.template"),
        (["train.best_metric=macro_f1"], "train.best_metric"),
        (["loss.focal_alpha=0.25,x"], "loss.focal_alpha"),
        (["distributed.num_processes=2", "distributed.process_id=2"], "distributed.process_id"),
    ],
)
def test_validate_rejects_bad_values_naming_the_key(overrides, key):
    cfg = load_config(DEFAULT, overrides)
    with pytest.raises(UserError, match=key):
        validate_config(cfg)


def test_validate_accepts_the_documented_options():
    cfg = load_config(
        DEFAULT,
        [
            "devices=0,1,2,3",
            "contrastive.schedule=cosine",
            "contrastive.ramp_steps=100",
            "contrastive.temperature_schedule=learnable",
            "model.feature_layer=2",
            "data.template=Classify: {text}",
            "train.best_metric=val/silhouette",
            "loss.focal_alpha=balanced",
        ],
    )
    validate_config(cfg)


def test_focal_alpha():
    assert parse_focal_alpha("", [3, 1]) is None
    assert parse_focal_alpha("balanced", [30, 10]) == pytest.approx([40 / 60, 40 / 20])
    assert parse_focal_alpha("0.25, 0.75", [3, 1]) == [0.25, 0.75]
    with pytest.raises(UserError, match="2 weights but there are 3 classes"):
        parse_focal_alpha("0.25,0.75", [1, 1, 1])
    with pytest.raises(UserError, match="loss.focal_alpha"):
        parse_focal_alpha("0,1", None)


def test_json_round_trip_keeps_values_and_types():
    cfg = load_config(CONFIGS / "margin.py", ["data.train=训练.xlsx"])
    back = config_from_json(config_to_json(cfg))
    assert back == cfg
    assert _leaf_types(back) == _leaf_types(cfg)
    with pytest.raises(AttributeError):
        back.new_key = 1  # locked like the loaded config
    assert "训练.xlsx" in config_to_json(cfg)


def test_workdir_defaults_to_runs_name():
    assert resolve_workdir(load_config(CONFIGS / "margin.py")) == Path("runs/margin")
    assert resolve_workdir(load_config(DEFAULT, ["workdir=/tmp/x"])) == Path("/tmp/x")


def test_missing_config_file():
    with pytest.raises(UserError, match="nope.py not found"):
        load_config(CONFIGS / "nope.py")


def test_a_run_config_without_newer_keys_reads_them_as_defaults(tmp_path):
    """A config.json written before a key existed still loads: missing keys get the default,
    saved values are kept (even where the default differs)."""
    from jaxcls.config import config_to_json
    from jaxcls.formats import run_dir

    cfg = load_config("configs/tiny.py")
    saved = json.loads(config_to_json(cfg))
    del saved["contrastive"]["cached"], saved["model"]["quantize"], saved["eval"]
    del saved["optim"]["ema"]
    saved["data"]["max_length"] = 17
    (tmp_path / "config.json").write_text(json.dumps(saved))
    read = run_dir.read_config(tmp_path)
    assert read.contrastive.cached == load_config("configs/default.py").contrastive.cached
    assert read.model.quantize == "none" and read.eval.calibrate is True
    assert read.data.max_length == 17
    # Such a run kept no weight average, whatever today's default: its checkpoints say so.
    assert load_config("configs/default.py").optim.ema > 0 and read.optim.ema == 0.0
