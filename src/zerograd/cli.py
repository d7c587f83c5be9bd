"""Command line: each subcommand maps its flags to one library call. Every command ends in exit
0; or one line `zerograd: error: ...` and exit 2 for bad input (a ZerogradError); or one line
`zerograd: internal error: ...` and exit 1 for anything unexpected (the traceback only under
`--debug`)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

from .bench import run_bench
from .catalog import preset_lines, presets_markdown
from .config import load_config
from .errors import ConfigError, ZerogradError
from .evaluate import NORMALIZE, evaluate_external, evaluate_path, model_args_of
from .export import export_model
from .measure import measure_path
from .methods import METHODS
from .report import build_report
from .reproduce import check_planned, predictions, reproduce
from .results import attack_title
from .runfolder import resume_config
from .sanity import format_checks
from .selftest import main as run_selftest
from .train import train
from .version import __version__

DESCRIPTION = ("zerograd: fast adversarial training without catastrophic overfitting "
               "(ZeroGrad, MultiGrad and baselines), evaluation by PGD and AutoAttack, "
               "diagnostics and reports.")


MODEL_HELP_TRAIN = ("your own model: module:path/to/file.py:factory or pkg.module:factory (the "
                    "same as --set model=SPEC); needed again to --resume such a run")
MODEL_HELP_LOAD = ("the model spec the run was trained with (module:file.py:factory): a run of "
                   "your own model is loaded only when you name its code")


def _train(args) -> int:
    overrides = list(args.set or [])
    if args.resume:
        return _resume(args, overrides)
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    cfg = load_config(args.preset, overrides)
    out = args.out or Path("runs") / f"{args.preset or cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = train(cfg, out, quiet=args.quiet, force=args.force, model=args.model)
    if not args.quiet and run.dir is not None:  # rank 0 only under torchrun
        print(f"run folder: {run.dir}", file=sys.stderr)
    return 0


def _resume(args, overrides: list[str]) -> int:
    for flag, given in (("--out", args.out), ("--force", args.force)):
        if given:
            raise ConfigError(f"--resume cannot be combined with {flag}: the run folder is the one resumed")
    cfg, changed = resume_config(args.resume, args.preset, overrides, args.data_dir)
    run = train(cfg, args.resume, quiet=args.quiet, resume=True, changed=changed, model=args.model)
    if not args.quiet:
        print(f"run folder: {run.dir}", file=sys.stderr)
    return 0


EXTERNAL_ONLY = (("--weights", "weights"), ("--dataset", "dataset"), ("--normalize", "normalize"),
                 ("--mean", "mean"), ("--std", "std"), ("--set", "set"), ("--image-size", "image_size"))


def _image_size(values: list[int] | None):
    """--image-size 64 or --image-size 64 48 as the config's image_size (an int or [H, W])."""
    if values is None:
        return None
    if len(values) > 2:
        raise ConfigError(f"--image-size {' '.join(map(str, values))}: give one size (square) or two "
                          "(height width)")
    return values[0] if len(values) == 1 else list(values)


def _eval(args) -> int:
    external = [flag for flag, dest in EXTERNAL_ONLY if getattr(args, dest) is not None]
    common = {"attack": args.attack, "n": args.n, "steps": args.steps, "restarts": args.restarts,
              "alpha": args.alpha, "eps": args.eps, "data_dir": args.data_dir,
              "batch_size": args.batch_size, "seed": args.seed, "version": args.version,
              "attacks": args.attacks, "state": args.state, "out": args.out,
              "checks": not args.no_checks, "quiet": args.quiet or args.json}
    if args.path is not None:
        if external:
            raise ConfigError(f"{external[0]} is for a model zerograd did not train, which has no run "
                              f"folder: give either RUN ({args.path!r}) or --model SPEC --weights FILE "
                              "--dataset NAME, not both")
        result = evaluate_path(args.path, which=args.checkpoint, model=args.model, **common)
    else:
        if args.checkpoint is not None:
            raise ConfigError("--checkpoint chooses a run folder's checkpoint; --weights names the "
                              "file itself")
        result = evaluate_external(args.weights, model=args.model, dataset=args.dataset,
                                   model_args=model_args_of(args.set),
                                   normalize=args.normalize or "none", mean=args.mean,
                                   std=args.std, image_size=_image_size(args.image_size), **common)
    if args.json:
        print(json.dumps(result))
        return 0
    a = result["attack"]
    name = attack_title(a)
    if result["checkpoint_kind"] == "external":
        norm = result["normalization"]
        print(f"weights {result['checkpoint']} (sha256 {result['checkpoint_sha256'][:16]}), model "
              f"{result['model']}, normalization " + (
                  "none (the model gets pixels in [0, 1])" if norm is None else
                  f"mean {[round(v, 4) for v in norm['mean']]} std {[round(v, 4) for v in norm['std']]} "
                  f"(from {norm['from']})"))
    else:
        print(f"checkpoint {result['checkpoint']} ({result['checkpoint_kind']}, epoch "
              f"{result['checkpoint_epoch']}, sha256 {result['checkpoint_sha256'][:16]})")
    print(f"{result['dataset']} {result['split']}, n={result['n']}, eps={a['eps']:.5f}\n"
          f"clean accuracy   {100 * result['clean_acc']:6.2f}%\n"
          f"{name} accuracy {100 * result['robust_acc']:6.2f}%  ({result['seconds']:.1f}s)")
    if "robust_after" in result:
        print("  after " + ", ".join(f"{k} {100 * v:.2f}% ({result['seconds_by_attack'][k]:.0f}s)"
                                     for k, v in result["robust_after"].items()))
    if "checks" in result:
        print(format_checks(result["checks"]) + f"  ({result['checks_seconds']:.1f}s)")
    if "results_file" in result:
        print(f"results: {result['results_file']}")
    return 0


def _export(args) -> int:
    out = export_model(args.path, args.out, which=args.checkpoint, force=args.force,
                       model=args.model)
    print(f"exported to {out} (load with zerograd.export.load_exported)")
    return 0


def _methods(args) -> int:
    for name, fn in METHODS.items():
        params = ", ".join(f"{k}={v}" for k, v in METHODS.defaults(name).items())
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<10} {params}\n{'':<10} {doc}")
    return 0


def _presets(args) -> int:
    print(presets_markdown() if args.markdown else "\n".join(preset_lines()) + "\n", end="")
    return 0


def _bench(args) -> int:
    report = run_bench(model=args.model, batch_size=args.batch_size, repeats=args.repeats,
                       methods=args.methods, threads=args.threads, quiet=args.json,
                       memory=args.memory, paper=args.paper)
    if args.json:
        print(json.dumps(report))
    return 0


def _measure(args) -> int:
    result = measure_path(args.path, table=args.table, which=args.checkpoint, split=args.split,
                          n=args.n, methods=args.methods, batch_size=args.batch_size, seed=args.seed,
                          data_dir=args.data_dir, out=args.out, quiet=args.json, model=args.model)
    if args.json:
        print(json.dumps(result))
    return 0


def int64(text: str) -> int:
    """An integer option: what torch and numpy can hold (argparse names this type in errors)."""
    value = int(text)
    if abs(value) > 2**63 - 1:
        raise ValueError(text)
    return value


def finite(text: str) -> float:
    """A float option: a finite number (NaN and infinities are refused by argparse)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines end with the option's default, unless it is none or the line names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line like every other error (exit 2), and whose
    help shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] + " " if " " in self.prog else ""
        self.exit(2, f"zerograd: error: {message} (see zerograd {command}--help)\n")


def _report(args) -> int:
    judged = None
    if args.experiment is not None:
        judged = predictions(args.experiment)
        check_planned(args.experiment, args.runs)
    path = build_report(args.runs, args.out, gradient_images=args.gradient_images, data_dir=args.data_dir,
                        epochs=args.epochs, predictions=judged)
    print(f"report: {path}", file=sys.stderr)
    return 0


def _selftest(args) -> int:
    return run_selftest(args.device, compile_model=args.compile, distributed=not args.no_distributed)


def _reproduce(args) -> int:
    reproduce(args.name, args.out, seeds=args.seeds, only=args.only, dry_run=args.dry_run,
              data_dir=args.data_dir, quiet=args.quiet, keep=args.keep, autoattack=not args.no_autoattack)
    return 0


DATA_DIR_HELP = "folder with the datasets' standard files (or $ZEROGRAD_DATA_DIR)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zerograd", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"zerograd {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (see `zerograd presets`)")
    p.add_argument("--preset", help="preset name or a YAML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set eps=8/255 --set method_args.q=0.4")
    p.add_argument("--out", help="run folder (default runs/PRESET-TIMESTAMP)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty run folder")
    p.add_argument("--resume", metavar="RUN", help="continue the unfinished run folder RUN exactly")
    p.add_argument("--model", metavar="SPEC", help=MODEL_HELP_TRAIN)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="clean and robust accuracy (PGD, FGSM, AutoAttack) of a "
                       "run folder, a checkpoint or a model zerograd did not train, with "
                       "gradient-masking checks and a results file",
                       description="zerograd eval RUN evaluates a run folder or checkpoint; "
                       "zerograd eval --model SPEC --weights FILE --dataset NAME evaluates a "
                       "model zerograd did not train (see docs/evaluation.md).")
    p.add_argument("path", nargs="?", help="run folder or checkpoint file (omit it with --weights)")
    p.add_argument("--attack", default="pgd", help="pgd, fgsm or autoattack")
    p.add_argument("--version", default="standard",
                   help="AutoAttack version: standard, plus, rand or custom")
    p.add_argument("--attacks", nargs="+", help="AutoAttack attacks for --version custom "
                   "(apgd-ce apgd-dlr apgd-t fab fab-t square)")
    p.add_argument("--n", type=int64, help="evaluate the first N test images")
    p.add_argument("--steps", type=int64, default=None, help="PGD steps (default: the run's test_pgd_steps; 50 with --weights)")
    p.add_argument("--restarts", type=int64, default=None, help="PGD restarts (default: the run's test_restarts; 10 with --weights)")
    p.add_argument("--alpha", type=finite, default=None, help="PGD step in units of eps (default: the run's test_alpha, 0.25 = 2/255 at eps 8/255)")
    p.add_argument("--eps", help="override the run's eps (e.g. 8/255; default 8/255 with --weights)")
    p.add_argument("--checkpoint", choices=("last", "best"), default=None,
                   help="which checkpoint of a run folder (default last)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--batch-size", type=int64, default=256, help="evaluation batch size")
    p.add_argument("--seed", type=int64, default=0, help="seed of the attacks' random starts")
    p.add_argument("--out", help="results file (default RUN/evals/ATTACK-CHECKPOINT-nN.json; with "
                   "--weights FILE: FILE's stem.DATASET.ATTACK-nN.json beside it)")
    p.add_argument("--state", help="AutoAttack state file to resume from (default: beside the "
                   "results file, deleted when done)")
    p.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks")
    p.add_argument("--model", metavar="SPEC", help=MODEL_HELP_LOAD + "; with --weights: the "
                   "network to load them into: a spec or a zerograd model name (e.g. small_cnn)")
    p.add_argument("--weights", metavar="FILE", help="evaluate a model zerograd did not train: its "
                   "state_dict in .safetensors, or .pt/.pth (a state_dict, or one under "
                   "'state_dict' or 'model'; loaded as data only); needs --model and --dataset")
    p.add_argument("--dataset", metavar="NAME", help="with --weights: the dataset to evaluate on "
                   "(its test split); the factory gets its num_classes and in_channels")
    p.add_argument("--set", action="append", metavar="model_args.KEY=VALUE",
                   help="with --weights: an argument of the model's factory, as in training")
    p.add_argument("--normalize", choices=NORMALIZE, default=None,
                   help="with --weights: none (default: the network gets pixels in [0, 1] and "
                   "normalizes itself, like RobustBench models) or dataset (zerograd's Normalize "
                   "with the dataset's mean/std in front); eps is in pixels either way; a zerograd export or "
                   "checkpoint brings its own")
    p.add_argument("--mean", type=finite, nargs="+", metavar="M",
                   help="with --weights: put Normalize with this per-channel mean in front (with --std)")
    p.add_argument("--std", type=finite, nargs="+", metavar="S",
                   help="with --weights: the per-channel std of --mean")
    p.add_argument("--image-size", type=int, nargs="+", metavar="PX",
                   help="with --weights and --dataset folder:PATH: resize the images to PX (square) "
                   "or to HEIGHT WIDTH, as image_size in training")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="export a model for RobustBench-style loading "
                       "(safetensors + model.json)")
    p.add_argument("path", help="run folder or checkpoint file")
    p.add_argument("--out", help="folder (default RUN/export)")
    p.add_argument("--checkpoint", choices=("last", "best"), default=None,
                   help="which checkpoint of a run folder (default last)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty folder")
    p.add_argument("--model", metavar="SPEC", help=MODEL_HELP_LOAD)
    p.set_defaults(func=_export)

    p = sub.add_parser("methods", help="training methods and their default hyperparameters")
    p.set_defaults(func=_methods)
    p = sub.add_parser("presets", help="available presets")
    p.add_argument("--markdown", action="store_true",
                   help="print docs/presets.md: each preset's sources, reported numbers and differences")
    p.set_defaults(func=_presets)

    p = sub.add_parser("bench", help="time one training step of each method side by side")
    p.add_argument("--model", default="preact_resnet18", help="model to time")
    p.add_argument("--batch-size", type=int64, default=128, help="training batch size")
    p.add_argument("--repeats", type=int64, default=3, help="timed steps per method")
    p.add_argument("--methods", nargs="*", help="settings to time: their names (pgd10), or training "
                   "method or regularizer names as train uses them (pgd, grad_align)")
    p.add_argument("--threads", type=int64, default=None, help="torch threads (default: torch's)")
    p.add_argument("--memory", action="store_true",
                   help="also each step's peak memory (CPU: RSS high-water mark, a process per method)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's Sec. 4.4 timing table as ratios beside the measured ones and "
                   "each method's compute-bound limit (attack passes a, update u) from this run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)

    p = sub.add_parser("measure", help="the paper's Table 10 (sign disagreement with PGD-10, no "
                       "random starts) or Table 4 (mean |delta| x 255) of one model, every method")
    p.add_argument("path", help="run folder or checkpoint file (e.g. RUN/checkpoints/epoch-5.pt)")
    p.add_argument("--table", type=int, default=10, help="10 (default) or 4")
    p.add_argument("--checkpoint", default=None, help="for a run folder: last (default), best or epoch-N")
    p.add_argument("--split", default="train", help="train (default: the run's training split), val or test")
    p.add_argument("--n", type=int, help="only the split's first N images")
    p.add_argument("--methods", nargs="+", help="subset of the measured methods")
    p.add_argument("--batch-size", type=int, help="mini-batch size (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--out", help="results file (default RUN/evals/tableT-CHECKPOINT-nN.json; "
                   "another --split or --methods adds -SPLIT / -M1+M2 after tableT)")
    p.add_argument("--model", metavar="SPEC", help=MODEL_HELP_LOAD)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_measure)

    p = sub.add_parser("report", help="report.md and plots from run folders (CO events, diagnostics, tables)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--out", help="report folder (default: the run folder, if only one)")
    p.add_argument("--gradient-images", type=int64, default=4,
                   help="test images in the input-gradient figure (paper Fig. 3) per run; 0: none")
    p.add_argument("--epochs", type=int64, nargs="+", metavar="E",
                   help="epochs of the table of validation accuracies (default: 9 spread over the longest run)")
    p.add_argument("--experiment", metavar="NAME",
                   help="judge this experiment's predictions (its runs are named ROW-sSEED) on the given runs")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.set_defaults(func=_report)

    p = sub.add_parser("selftest", help="one step of every method in each precision and layout this "
                       "device supports, compared with float32, and a two-process DDP check")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--compile", action="store_true", help="also check torch.compile (slow on a CPU)")
    p.add_argument("--no-distributed", action="store_true", help="skip the two-process check")
    p.set_defaults(func=_selftest)

    p = sub.add_parser("reproduce", help="train and report a named experiment (see docs/reproduction.md)")
    p.add_argument("name", help="experiment name (e.g. cpu-co)")
    p.add_argument("--out", help="folder of the runs and the report (default runs/NAME)")
    # "+": a bare --only would otherwise mean every run (hours), a bare --seeds none at all
    p.add_argument("--seeds", type=int64, nargs="+", help="override the experiment's seeds")
    p.add_argument("--only", nargs="+", help="run only these settings (by name)")
    p.add_argument("--dry-run", action="store_true", help="print the equivalent train commands")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument("--keep", metavar="DIR", help="copy each finished run's small files (config, "
                   "metrics, results; no checkpoints) to DIR/<run>, e.g. a folder under docs/")
    p.add_argument("--no-autoattack", action="store_true", help="train only: leave the experiment's "
                   "AutoAttack of the runs that do not overfit to a later call (it needs their checkpoints)")
    p.set_defaults(func=_reproduce)
    return parser


def _one_line(text: object, limit: int = 300) -> str:
    """A message as one line of at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ZerogradError as e:
        print(f"zerograd: error: {_one_line(e, 2000)}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: a full disk, a vanished folder
        where = f" ({e.filename})" if e.filename else ""
        print(f"zerograd: error: {_one_line(e.strerror or e)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zerograd: interrupted", file=sys.stderr)
        return 130
    except (Exception, RecursionError, MemoryError) as e:  # noqa: BLE001 (the last resort: a bug, in one line)
        if args.debug:
            traceback.print_exc()
        print(f"zerograd: internal error: {type(e).__name__}: {_one_line(e)} (a bug; rerun with "
              f"--debug for the traceback and report it)", file=sys.stderr)
        return 1
