"""`python -m trainer COMMAND`: validate, synth, train, cv, smoke, evaluate, compare.

Exit codes: 0 success; 2 bad input or configuration (the message says what and where);
3 training stopped on request (SIGTERM), resumable; 1 anything else (traceback printed,
and in train.log for training runs).
"""

import argparse
import sys
from pathlib import Path

from trainer import startup
from trainer.errors import UserError
from trainer.names import check_run_name
from trainer.training.status import write_json_atomic


def cmd_validate(args):
    from trainer.config import load_config
    from trainer.data.pipeline import validate_with_progress
    from trainer.data.validation import require_trainable, write_manifest
    from trainer.results.report import make_console

    cfg = load_config(args.config, args.set)
    result = validate_with_progress(args.data, cfg["data"], make_console())
    if args.report:
        write_manifest(result, args.report)
        print(f"Wrote {args.report}")
    args.outcome.update(files=len(result.entries), accepted=len(result.accepted), rejected=len(result.rejected))
    require_trainable(result, cfg["data"]["classes"])
    if args.pack:
        from trainer.data.packed import pack

        try:
            clips, written = pack(sorted(e.path for e in result.accepted), cfg["data"]["feature_key"], args.pack)
        except OSError as e:  # e.g. a full disk: training reads the NPZs instead, and says so
            print(f"warning: no pack written in {args.pack} ({e}); training will read the NPZ files", file=sys.stderr)
            (args.pack / ".frames.npy.tmp").unlink(missing_ok=True)
            clips, written = 0, False
        else:
            print(f"{'Packed' if written else 'Pack up to date:'} {clips} clips in {args.pack}")
        args.outcome.update(packed=clips)
    args.outcome["message"] = f"{len(result.accepted)} of {len(result.entries)} files can train"


def cmd_synth(args):
    from trainer.data.synth import write_corpus

    paths = write_corpus(args.out, args.corpus, args.clips, args.seed, suffix=args.suffix)
    print(f"Wrote {len(paths)} synthetic {args.corpus} clips to {args.out}")


def cmd_train(args):
    from trainer.training.run import execute, new_run

    if args.resume:
        from trainer.training.cv import continue_cv, is_cv

        if is_cv(args.resume):
            continue_cv(args.resume, price_per_hour=args.price_per_hour, data_dirs=args.data)
            return
        execute(args.resume, data_dirs=args.data, resume=True, epochs=args.epochs, price_per_hour=args.price_per_hour, packed_dir=args.packed)
        return
    from trainer.config import load_config

    overrides = [*args.set, *([f"train.epochs={args.epochs}"] if args.epochs else [])]
    cfg = load_config(args.config, overrides)
    if not args.data:
        raise UserError("train needs --data DIR (one or more), or --resume RUN_DIR.")
    if args.run_name is not None:
        check_run_name(args.run_name, "--run-name")
    execute(new_run(cfg, args.out, args.run_name), data_dirs=args.data, price_per_hour=args.price_per_hour, packed_dir=args.packed)


def cmd_cv(args):
    from trainer.config import load_config
    from trainer.training.cv import start_cv

    if args.run_name is not None:
        check_run_name(args.run_name, "--run-name")
    cfg = load_config(args.config, [*args.set, *([f"train.epochs={args.epochs}"] if args.epochs else [])])
    start_cv(cfg, args.data, args.out, args.folds, run_name=args.run_name, price_per_hour=args.price_per_hour)


def cmd_smoke(args):
    from trainer.training.smoke import smoke

    run_dir, seconds, estimated = smoke(args.data, args.out, synthetic=args.synthetic, config=args.config, overrides=args.set,
                                        estimate_config=args.estimate_config)
    args.outcome.update(run_dir=str(run_dir), seconds=round(seconds, 1), message=f"Smoke test passed in {seconds:.0f} s: {run_dir}",
                        estimate=estimated)


def cmd_evaluate(args):
    from trainer.results.evaluate import evaluate_run

    evaluate_run(args.run, args.data)


def cmd_compare(args):
    from trainer.results.compare import compare_runs, print_comparison, write_comparison
    from trainer.results.report import make_console

    console = make_console()
    result = compare_runs(args.run_a, args.run_b)
    print_comparison(result, console)
    json_path, png_path = write_comparison(result, args.out)
    console.print(f"Wrote {json_path} and {png_path}", highlight=False)
    args.outcome.update(message=result["verdict"], difference=result["difference"], ci95=result["ci95"])


# over 50 lines on purpose: the command line as one table, an option a line
def build_parser():
    p = argparse.ArgumentParser(prog="python -m trainer", description="Video-only emotion recognition on FaceNet features.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, data_required):
        sp.add_argument("--result", type=Path, metavar="FILE",
                        help="write the outcome as JSON (ok, exit_code, message, ...) for the program that ran this one")
        sp.add_argument("--data", action="append", type=Path, required=data_required, metavar="DIR",
                        help="directory searched recursively for *.npz (repeatable)")
        sp.add_argument("--config", type=Path, help="YAML configuration (defaults: trainer/config.py)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config value")

    sp = sub.add_parser("validate", help="find, label and check feature files; exit 2 if they cannot train")
    common(sp, True)
    sp.add_argument("--report", type=Path, help="write a JSON manifest with one entry per file")
    sp.add_argument("--pack", type=Path, metavar="DIR", help="also write the accepted clips into one memory-mappable file in DIR "
                    "(train --packed DIR reads them from there); kept when the files are unchanged")
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("synth", help="write synthetic feature files with the real structure")
    sp.add_argument("--out", type=Path, required=True)
    sp.add_argument("--corpus", choices=["crema-d", "ravdess"], default="crema-d")
    sp.add_argument("--clips", type=int, default=200)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--suffix", default="", help="appended to each file name, e.g. _facenet_features")
    sp.set_defaults(func=cmd_synth)

    sp = sub.add_parser("train", help="train one run into RUNS_DIR/<run-name>")
    common(sp, False)
    sp.add_argument("--out", type=Path, default=Path("runs"), metavar="RUNS_DIR")
    sp.add_argument("--run-name")
    sp.add_argument("--epochs", type=int)
    sp.add_argument("--resume", type=Path, metavar="RUN_DIR",
                    help="continue an interrupted run from its backup; with --data, its data moved there (another host)")
    sp.add_argument("--price-per-hour", type=float, metavar="USD", help="what the machine costs: metrics.json records the run's cost")
    sp.add_argument("--packed", type=Path, metavar="DIR", help="read clips from the pack of `validate --pack DIR` where it is current")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("cv", help="K-fold cross-validation by actor into RUNS_DIR/<run-name>/fold-k (resume: train --resume)")
    common(sp, True)
    sp.add_argument("--folds", type=int, required=True, metavar="K", help="number of actor-disjoint folds (each actor tested once)")
    sp.add_argument("--out", type=Path, default=Path("runs"), metavar="RUNS_DIR")
    sp.add_argument("--run-name")
    sp.add_argument("--epochs", type=int)
    sp.add_argument("--price-per-hour", type=float, metavar="USD", help="what the machine costs: each fold's metrics.json records its cost")
    sp.set_defaults(func=cmd_cv)

    sp = sub.add_parser("smoke", help="small end-to-end check: 2 epochs on a few clips, reload, predict")
    common(sp, False)
    sp.add_argument("--out", type=Path, default=Path("runs"), metavar="RUNS_DIR")
    sp.add_argument("--synthetic", action="store_true", help="add a small synthetic data set (no real data needed)")
    sp.add_argument("--estimate-config", type=Path, metavar="CONFIG",
                    help="then estimate CONFIG's training here: the result's `estimate` (seconds, its parts, seconds per step, steps, epochs)")
    sp.set_defaults(func=cmd_smoke)

    sp = sub.add_parser("evaluate", help="score a run's best model on its validation split or other data")
    sp.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    sp.add_argument("--data", action="append", type=Path, metavar="DIR")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("compare", help="B − A in test UAR, accuracy and macro F1 on the same test clips, with a 95%% interval "
                        "paired over the actors; per-class recall of both drawn")
    sp.add_argument("run_a", type=Path, metavar="RUN_A", help="a run folder, or a cross-validation run folder")
    sp.add_argument("run_b", type=Path, metavar="RUN_B", help="another, tested on the same clips")
    sp.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                    help="where compare-A-vs-B.json and compare-A-vs-B.png go (default: the current folder)")
    sp.add_argument("--result", type=Path, metavar="FILE", help="write the outcome as JSON for the program that ran this one")
    sp.set_defaults(func=cmd_compare)
    return p


def main(argv=None):
    startup.keras_without_matplotlib()  # a trainer process: Keras loads without pyplot (trainer/startup.py)
    args = build_parser().parse_args(argv)
    args.outcome = {"command": args.command, "ok": False, "exit_code": 1, "message": ""}
    try:
        args.func(args)
        args.outcome.update(ok=True, exit_code=0)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        args.outcome.update(exit_code=e.exit_code, message=str(e), error=type(e).__name__)
        return e.exit_code
    except BaseException as e:
        code = getattr(e, "exit_code", 1)
        args.outcome.update(exit_code=code, message=f"{type(e).__name__}: {e}", error=type(e).__name__)
        if code == 1:
            raise  # traceback, exit 1
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return code
    finally:
        # The deploy side reads this file, never the output: TensorFlow's stderr differs by machine.
        if getattr(args, "result", None):
            write_json_atomic(args.result, args.outcome)
