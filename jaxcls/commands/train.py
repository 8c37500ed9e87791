"""jaxcls train: fine-tune a classifier as a config says, then evaluate it on data.test."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxcls import cli, config_files, interrupts
from jaxcls.config import load_config, resolve_workdir, validate_config
from jaxcls.data import splits
from jaxcls.errors import UserError
from jaxcls.files import write_text_atomic
from jaxcls.formats import run_dir

USAGE = """\
usage: {prog} [--config NAME|FILE] [--config.KEY=VALUE ...] [--workdir DIR] [--debug]
       (jaxcls train, python -m jaxcls train and python train.py in a checkout are the same)

Fine-tune a Qwen3 classifier (LoRA, focal and contrastive losses) on the config's data files,
then evaluate its best checkpoint on data.test (report in RUN/eval/). Re-running the same
command resumes from the run's latest checkpoint. Ctrl-C during training stops after the step
and saves a checkpoint (exit 0); before the first step it quits at once (exit 130).

options:
  --config NAME|FILE   a config file, or a shipped one by name: {names}
                       (default: default)
  --config.KEY=VALUE   set a config key (all listed below); repeatable
  --workdir DIR        the run directory (default: the config's workdir, else runs/<name>)
  --debug              show tracebacks instead of one-line errors
  -h, --help           this help; with --config X it shows X's values"""


@dataclasses.dataclass
class Args:
    config: str = config_files.DEFAULT
    overrides: list[str] = dataclasses.field(default_factory=list)
    workdir: str | None = None
    debug: bool = False
    help: bool = False


def parse_args(argv: Sequence[str]) -> Args:
    """``--config X``, ``--config.key=value`` (or ``--config.key value``), ``--workdir``, ..."""
    args, rest = Args(), list(argv)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if arg in ("-h", "--help"):
            args.help = True
        elif arg == "--debug":
            args.debug = True
        elif name in ("--config", "--workdir") or name.startswith("--config."):
            if not eq:
                if not rest:
                    raise UserError(f"{name} needs a value; see --help")
                value = rest.pop(0)
            if name == "--config":
                args.config = value
            elif name == "--workdir":
                args.workdir = value
            else:
                args.overrides.append(f"{name.removeprefix('--config.')}={value}")
        else:
            raise UserError(
                f"unknown flag {arg!r}; set config keys as --config.KEY=VALUE, see --help"
            )
    return args


def help_text(path: Path, cfg, prog: str = "jaxcls train") -> str:
    names = ", ".join(config_files.shipped_names())
    keys = config_files.describe(cfg)
    usage = USAGE.format(prog=prog, names=names)
    return f"{usage}\n\nconfig keys, with the values of {path}:\n\n{keys}"


def remove_if_interrupted(workdir: Path) -> None:
    """A run dir this command creates is removed (and runs/LATEST restored) when a signal ends
    the command before the run has a complete checkpoint: nothing half-made stays behind."""
    if workdir.exists():
        return
    latest = workdir.parent / run_dir.LATEST
    before = latest.read_text(encoding="utf-8") if latest.is_file() else None

    def cleanup() -> str | None:
        ckpts = workdir / "checkpoints"  # Orbax names a step's dir by its number once complete
        if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
            return None
        for _ in range(3):  # the main thread may still be writing into it
            shutil.rmtree(workdir, ignore_errors=True)
            if not workdir.exists():
                break
        if latest.is_file() and latest.read_text(encoding="utf-8").strip() == str(
            workdir.absolute()
        ):
            if before is None:
                latest.unlink(missing_ok=True)
            else:
                write_text_atomic(latest, before)
        return f"removed the new run dir {workdir} (no checkpoint yet)"

    interrupts.on_exit(cleanup)


def main(argv: Sequence[str] | None = None, prog: str = "jaxcls train") -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = config_files.find(args.config)
    cfg = load_config(path, args.overrides)
    if args.help:
        print(help_text(path, cfg, prog))
        return 0
    cli.setup_logging()
    # Everything that needs no model, before JAX loads: the config, then the data files.
    validate_config(cfg)
    inputs = splits.read_inputs(cfg.data, cfg.seed)
    workdir = Path(args.workdir) if args.workdir else resolve_workdir(cfg)
    remove_if_interrupted(workdir)

    from jaxcls.evaluate_run import evaluate_after_training
    from jaxcls.train.distributed import maybe_initialize
    from jaxcls.train.trainer import Trainer

    maybe_initialize(cfg)
    trainer = Trainer(cfg, workdir, inputs)
    result = trainer.fit()
    # The test evaluation reuses the training's model (base placed, eval step compiled); the
    # rest of the trainer (optimizer state, train step) goes first.
    run, trainer = trainer.run, None
    gc.collect()
    if result["status"] != "interrupted":
        evaluate_after_training(cfg, result["workdir"], run)
    return 0
