"""One training run, from data directories to a run directory that explains itself.

    run_dir = new_run(cfg, ["data/crema-d"], "runs", run_name=None)   # runs/20261124-101500/
    execute(run_dir, data_dirs=["data/crema-d"])                       # trains; raises on failure
    execute(run_dir, resume=True)                                      # continues from backup/

A run directory holds config.yaml, manifest.json, split.json, normalization.npz,
best.keras, backup/ (until it finishes), logs/ (TensorBoard), history.csv, train.log,
environment.json, status.json and, at the end, metrics.json.
"""

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

from trainer.config import dump_config, load_config
from trainer.errors import DataError, PeerLost, Superseded, UserError
from trainer.results.report import make_console
from trainer.results.runfiles import refuse_special_entries
from trainer.run_format import run_format
from trainer.training.fence import fence_check
from trainer.training.logfile import tee_to
from trainer.training.status import RunStatus, now_iso, write_json_atomic

CODE_ROOT = Path(__file__).resolve().parents[2]


class Stopped(BaseException):
    """The run ended early because it was asked to (SIGTERM/SIGINT); its backup is intact.

    A BaseException, like KeyboardInterrupt: the signal handler raises it wherever the trainer
    is, and a library's `except Exception` must not swallow a stop request."""

    exit_code = run_format.STOPPED


def new_run(cfg, runs_dir, run_name=None):
    """Create the run directory and save the resolved configuration in it."""
    name = run_name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir) / name
    if (run_dir / "config.yaml").exists():  # the deploy launcher may have created it, with train.log
        raise UserError(f"Run directory {run_dir} already exists. Pick another --run-name, or --resume {run_dir}.")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return run_dir


def execute(run_dir, data_dirs=None, resume=False, epochs=None, console=None, price_per_hour=None, test_actors=None, mirror=None,
            packed_dir=None):
    """Train the run in `run_dir`; with `resume`, reuse its data (moved to `data_dirs`, if given) and continue from backup/.
    `price_per_hour` (USD) prices the compute hours in metrics.json; a resumed run keeps its last price.
    `test_actors` fixes the test split (a cross-validation fold); `mirror` = (path, fields): status.json
    is also written there with those fields (the CV run's status, see trainer/training/cv.py). `packed_dir`: the
    clips' pack (`validate --pack`), read instead of the NPZs where it is current."""
    run_dir = Path(run_dir)
    refuse_special_entries(run_dir, f"train in {run_dir}")  # before anything is written: a link would be written through
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml: not a run directory.")
    if resume:
        refuse_finished(run_dir)
    cfg = load_config(run_dir / "config.yaml", [f"train.epochs={epochs}"] if epochs else [])
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    _stop_at_once_until_training_starts(run_dir)
    with tee_to(run_dir / "train.log"):
        console = console or make_console(file=sys.stdout)
        status = RunStatus(run_dir, cfg["train"]["epochs"], mirror=mirror, host=platform.node())
        if price_per_hour is not None:
            status.update(price_per_hour=price_per_hour)
        console.rule(f"Run {run_dir.name} {'(resumed) ' if resume else ''}at {now_iso()}")
        console.print(dump_config(cfg), highlight=False)
        try:
            _train(cfg, run_dir, data_dirs, resume, status, console, test_actors, packed_dir)
        except Stopped as e:
            status.update(state="stopped", error={"type": "Stopped", "message": str(e)})
            print(f"Run stopped: {e}", flush=True)
            raise
        except BaseException as e:
            status.update(state="failed", error={"type": type(e).__name__, "message": str(e), **getattr(e, "record", {})})
            if getattr(e, "exit_code", 1) == 1:  # not a UserError nor a lost peer: a defect, show where
                traceback.print_exc()
            raise
        finally:
            _ignore_stop_requests()
    return run_dir


def refuse_finished(run_dir):
    """UserError (exit 2) for a finished run (a cross-validation: every fold finished): resuming it
    would train it again from its start, its backup being gone, and rewrite its history, best model
    and metrics. Nothing is written."""
    from trainer.training.cv import PLAN, is_cv

    run_dir = Path(run_dir)
    if is_cv(run_dir):
        try:
            folds = json.loads((run_dir / PLAN).read_text())["folds"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # continue_cv reports a broken plan
        done = all((run_dir / f"fold-{k}" / "metrics.json").is_file() for k in range(1, folds + 1))
        results = run_dir / "cv.json"
    else:
        try:
            state = json.loads((run_dir / run_format.STATUS).read_text()).get("state")
        except (OSError, ValueError, AttributeError):
            state = None
        done = (run_dir / run_format.METRICS).is_file() or state == "finished"
        results = run_dir / run_format.METRICS
    if done:
        raise UserError(f"run {run_dir.name} is finished; start a new run (its results: {results}). "
                        "Resuming it would train it again from its first epoch and rewrite them.")


def _ignore_stop_requests():
    """The run's end is recorded: a stop request now has nothing to stop. Python gives a signal it
    handles back to the default (die) when the interpreter exits, and TensorFlow's multi-worker
    teardown can take seconds after that, so a SIGTERM that comes late (a cluster's `fab stop`
    reaches a worker that the chief's stop already ended) would turn exit 3 into death by signal.
    Ignored signals stay ignored through exit. The next run (a CV fold) installs its handlers again."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def never_prepared(run_dir):
    """The run ended before its data was prepared (split.json, manifest.json or normalization.npz missing) and before
    any backup (not one epoch trained)."""
    run_dir = Path(run_dir)
    prepared = all((run_dir / name).is_file() for name in ("split.json", "manifest.json", "normalization.npz"))
    return not prepared and not any((run_dir / "backup").glob("training_metadata.json*"))


def _stop_at_once_until_training_starts(run_dir):
    """A stop request before the first epoch has nothing to save: end the run now as `stopped`.
    GracefulStop takes these signals over once training starts."""
    def handler(signum, frame):
        raise Stopped(f"on request ({signal.Signals(signum).name}) before training started; nothing was trained yet, "
                      f"so start again rather than resume (or --resume {run_dir} if its data was prepared).")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def _train(cfg, run_dir, data_dirs, resume, status, console, test_actors=None, packed_dir=None):
    from trainer.data import pipeline as data

    if resume and never_prepared(run_dir) and data_dirs:  # lost before its data was ready: no epoch, no split yet
        console.print(f"Run {run_dir.name} ended before its data was prepared (no backup, no split yet): preparing it now "
                      "with its config and seed, as a new run would")
        prepared = data.prepare(cfg, data_dirs, run_dir, console, test_actors=test_actors)
    elif resume:
        prepared = data.load_prepared(run_dir, data_dirs, console)
    else:
        if not data_dirs:
            raise UserError("No data: pass --data DIR (one or more).")
        prepared = data.prepare(cfg, data_dirs, run_dir, console, test_actors=test_actors)
    import keras  # after validation: a bad data dir fails fast, without loading TensorFlow

    from trainer.training import distribute, peers

    distribute.configure_devices()
    cluster = distribute.read_cluster()
    timeout = cfg["train"]["collective_timeout"]

    nobody_came = (f"the workers of {', '.join(cluster['workers'])} did not all join within train.collective_timeout "
                   f"({timeout} s): is every worker started, and can each reach the others' worker port? Their own train.log says."
                   if cluster else "")
    watch = peers.Watchdog(timeout, status.path, nobody_came) if cluster else peers.NoWatchdog()
    try:
        strategy = distribute.choose_strategy(cfg["train"]["distribute"], cluster, peer_timeout=timeout)
        _stop_at_once_until_training_starts(run_dir)  # TensorFlow's preemption notifier took SIGTERM over: take it back
        keras.utils.set_random_seed(cfg["seed"])
        distribution = distribute.describe(strategy, cfg["train"]["batch_size"], cluster)
        if distribute.worker_count(strategy) > 1:
            _same_data_as_the_chief(strategy, prepared, distribution)
            k = cfg["train"]["steps_per_execution"]
            watch.expect(f"worker {distribution['worker']}: no call of {k} training step(s) (train.steps_per_execution) ended within "
                         f"train.collective_timeout ({timeout} s; the set-up, a newly traced call's first run or a wait for the chief's "
                         f"epoch end: {peers.long_allowance(timeout):g} s): "
                         "a peer froze or lost its network (or this worker hung); the other workers' train.log says which. "
                         f"Resume every worker with: python -m trainer train --resume {run_dir}")
            # The set-up until training starts (each worker loads its data and builds the model, whose variables
            # wait for the chief's; the chief alone sets up its checkpoints and pictures): the peers' own work.
            watch.long_wait()
        chief = distribute.worker_index(strategy) == 0
        env = {**environment(), "distribution": distribution}
        write_json_atomic(run_dir / "environment.json", env)
        status.update(distribution=distribution)
        use_mp = cfg["train"]["mixed_precision"] == "on" or (cfg["train"]["mixed_precision"] == "auto" and env["gpus"])
        keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")
        where = f", worker {distribution['worker']} of {len(distribution['workers'])}" + (" (chief)" if chief else "") if cluster else ""
        console.print(f"Device: {', '.join(env['gpus']) or 'CPU'}; precision {'mixed_float16' if use_mp else 'float32'}; "
                      f"{distribution['strategy']} with {distribution['replicas']} replica(s){where}, "
                      f"global batch {distribution['global_batch_size']}")
        history, model, val_gen, started = _fit(cfg, run_dir, prepared, strategy, distribution, chief, status, console, resume, packed_dir,
                                                watch)
    except Exception as e:
        if not peers.lost_peer(e, len(cluster["workers"]) if cluster else 1):
            raise
        own = (cluster or {}).get("index", 0)
        raise PeerLost(f"worker {own} lost contact with {_peer_hint(e, own)} ({type(e).__name__}) and "
                       f"stopped; the failed worker's own record says why. Resume every worker with: "
                       f"python -m trainer train --resume {run_dir}", cause=type(e).__name__, local=peers.local_failure(e)) from None
    finally:
        watch.close()
    if not chief:
        status.update(state="finished", eta_seconds=0, weights_sha256=history.weights_sha256)
        console.print(f"Worker {distribution['worker']} done; the chief writes the model and the metrics.")
        return
    from trainer.training.model import load_model

    best = load_model(run_dir / "best.keras") if (run_dir / "best.keras").exists() else model
    metrics = final_scores(cfg, prepared, best, val_gen, distribution["global_batch_size"])
    metrics.update(
        best_epoch=(status.data["best"] or {}).get("epoch"),
        epochs_run=status.data["epoch"],
        training_seconds=round(time.monotonic() - started, 1),
        split_samples={side: len(prepared.split.get(side, [])) for side in ("train", "val", "test")},
        monitor=cfg["train"]["monitor"],
        compute=compute_record(status.data, len(env["gpus"])),
    )
    pictures = draw(run_dir, metrics, status.data["epoch"])  # {file name: PNG bytes}
    write_json_atomic(run_dir / run_format.METRICS, metrics)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # finished: nothing left to resume
    from trainer.results.report import headline, print_run_metrics

    print_run_metrics(metrics, console)
    console.print("Pictures: " + ", ".join(pictures) + f" in {run_dir} (and in TensorBoard, IMAGES)", highlight=False)
    name, top = headline(metrics)
    status.update(state="finished", metrics={"split": name, **{k: top[k] for k in ("accuracy", "uar", "macro_f1")},
                                             "ci95": top.get("ci95")}, eta_seconds=0, weights_sha256=history.weights_sha256)


def _fit(cfg, run_dir, prepared, strategy, distribution, chief, status, console, resume, packed_dir=None, watchdog=None):
    """Build the model under `strategy` and train it; the chief alone writes the run's shared files
    (best.keras, backup/, logs/, history.csv), every worker its own status.json."""
    import keras

    from trainer.data import pipeline as data
    from trainer.training import loop
    from trainer.training.callbacks import (
        AtomicModelCheckpoint,
        ConfusionImages,
        GracefulStop,
        LearningRateLogger,
        ResumeState,
        RunBackup,
        SafeCSVLogger,
        StatusCallback,
    )
    from trainer.training.model import build_model, class_weights, compile_model, cudnn_problems, load_model

    train_gen, val_gen = data.generators(cfg, prepared, batch_size=distribution["global_batch_size"], packed_dir=packed_dir, console=console)
    classes = cfg["data"]["classes"]
    with strategy.scope():
        model = compile_model(build_model(cfg["model"], len(classes), cfg["data"]["feature_dim"]), cfg["train"], len(classes))
    for problem in cudnn_problems(model):
        console.print(f"[yellow]warning[/]: LSTM will not use the cuDNN kernel: {problem}")
    monitor = cfg["train"]["monitor"]
    mode = "min" if monitor.endswith("loss") else "max"
    stop = GracefulStop()
    best_path = run_dir / "best.keras"
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=cfg["train"]["patience"], restore_best_weights=True)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=cfg["train"]["lr_factor"],
                                                  patience=cfg["train"]["lr_patience"], min_lr=cfg["train"]["min_lr"])
    if chief:
        checkpoint = AtomicModelCheckpoint(best_path, monitor=monitor, mode=mode, save_best_only=True)
        def best_on_disk():
            best = status.data.get("best") or {}
            return best.get("value") if best.get("metric") == monitor and best_path.exists() else None

        resume_state = ResumeState(checkpoint, early_stopping, reduce_lr, best_model=lambda: load_model(best_path) if best_path.exists() else None,
                                   best_on_disk=best_on_disk, mode=mode)
        writers = [
            checkpoint,
            ConfusionImages(checkpoint, classes, run_dir / "logs"),
            early_stopping,
            reduce_lr,
            keras.callbacks.TensorBoard(str(run_dir / "logs")),
            # the epoch's row before its backup: a kill between the two leaves a row past the backup's epoch, which the
            # resume removes and writes again; the other way round it left the run's history without that epoch's row
            SafeCSVLogger(str(run_dir / "history.csv"), append=True),  # never through a link
            # after the checkpoint, early stopping and the LR schedule (it saves and restores their state with the
            # weights); a kill during its save leaves the previous epoch's backup to resume from
            RunBackup(run_dir / "backup", resume_state, log=console.print, history=run_dir / "history.csv"),
        ]
    else:  # the same decisions from the same numbers, and no file of the run's
        resume_state = ResumeState(None, early_stopping, reduce_lr)
        writers = [early_stopping, reduce_lr]
    callbacks = [LearningRateLogger(), *writers, StatusCallback(status, monitor, mode), stop]
    weights = class_weights(train_gen.labels, len(classes)) if cfg["train"]["class_weights"] == "balanced" else None
    started = time.monotonic()
    fence = fence_check(run_dir)
    try:
        history = loop.fit(model, strategy, train_gen, val_gen, cfg["train"]["epochs"], callbacks, class_weight=weights,
                           resume=resume_state, stop=stop, workers=cfg["train"]["workers"], log=console.print,
                           steps_per_execution=cfg["train"]["steps_per_execution"], watchdog=watchdog, fence=fence)
    except KeyboardInterrupt:
        if not stop.requested:
            raise
        raise Stopped(f"at once on a second signal during epoch {status.data['epoch'] + 1}; the backup of epoch "
                      f"{status.data['epoch']} is intact; resume with: python -m trainer train --resume {run_dir}") from None
    if history.stopped_by_signal:
        raise Stopped(f"on request after epoch {status.data['epoch']}; resume with: python -m trainer train --resume {run_dir}")
    if fence is not None and fence() is not None:  # fenced after its last epoch: still no result of this launch
        raise Superseded(f"{fence()}; this launch writes no result (the run continues under the launch that took it over)")
    return history, model, val_gen, started


def _same_data_as_the_chief(strategy, prepared, distribution):
    """Every worker must plan the same batches: same files (by name), labels, lengths, split and
    normalisation as the chief. A worker whose data differs fails the run on every worker."""
    import hashlib

    import numpy as np

    from trainer.training import distribute

    digest = hashlib.sha256()
    for side in ("train", "val", "test"):
        for path in prepared.split.get(side) or []:
            e = prepared.entries[path]
            digest.update(f"{side}|{Path(path).name}|{e.emotion}|{e.frames}\n".encode())
    for key in ("mean", "std"):
        digest.update(np.asarray(prepared.stats[key], np.float32).tobytes())
    mine = digest.hexdigest()
    chiefs = distribute.broadcast_json(strategy, mine)
    (differs,) = distribute.agree(strategy, [mine != chiefs])
    if differs:
        who = "this worker's" if mine != chiefs else "another worker's"
        raise DataError(f"Worker {distribution['worker']}: {who} data differs from the chief's (files, labels, frame counts, "
                        "split or normalisation). Every worker needs the same data: `fab -H <cluster> deploy-full` syncs every host.")


def _peer_hint(error, own):
    """The peers TensorFlow's message names, this worker (`own`) left out: for the reader (the records of the
    workers are the facts). A heartbeat's timeout names the task that reports it."""
    found = sorted({int(k) for k in re.findall(r"/job:worker/replica:\d+/task:(\d+)", str(error))} - {own})
    return "worker " + " and ".join(map(str, found)) if found else "its peers"


def final_scores(cfg, prepared, model, val_gen, batch_size):
    """The best model scored on the validation split (which chose it) and, once, on the held-out test
    actors, with 95% intervals over actors; `headline` names the split a user should quote."""
    from trainer.data import pipeline as data
    from trainer.results.evaluate import predict, score
    from trainer.results.metrics import held_out_report

    classes = cfg["data"]["classes"]
    metrics = {"validation": score(model, val_gen, classes), "test": None, "headline": "validation"}
    test = prepared.split.get("test") or []
    if test:
        gen = data.make_generator(cfg, test, prepared.entries, prepared.stats, shuffle=False, batch_size=batch_size)
        y_true, y_pred = predict(model, gen)
        clips = [prepared.entries[test[i]] for i in gen.order]
        metrics["test"] = held_out_report(y_true, y_pred, [e.actor for e in clips], [e.corpus for e in clips], classes, seed=cfg["seed"])
        metrics["headline"] = "test"
    return metrics


def draw(run_dir, metrics, step):
    """The headline split's PNGs in the run dir; the same and the validation matrix in TensorBoard."""
    from trainer.results.plots import confusion_png, log_image, run_label, save_pictures

    name = metrics["headline"]
    pictures = save_pictures(run_dir, metrics[name], name, best_epoch=metrics.get("best_epoch"))
    log_image(run_dir / "logs", f"{name}/confusion_matrix_at_end", pictures["confusion_matrix.png"], step)
    log_image(run_dir / "logs", f"{name}/recall_per_class_at_end", pictures["recall.png"], step)
    if name != "validation":
        png = confusion_png(metrics["validation"], "validation", run_label(run_dir))
        log_image(run_dir / "logs", "validation/confusion_matrix_at_end", png, step)
    return pictures


def compute_record(status, gpus):
    """Hours the trainer ran (all sessions of a resumed run), GPU hours and, with a price, the cost in USD."""
    hours = status.get("compute_seconds", 0) / 3600
    price = status.get("price_per_hour")
    return {"hours": round(hours, 4), "gpus": gpus, "gpu_hours": round(hours * gpus, 4), "price_per_hour": price,
            "cost_usd": round(hours * price, 2) if price else None}


def environment():
    import keras
    import numpy
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "code_version": code_version(),
        "recorded_at": now_iso(),
    }


def code_version():
    """`.code-version` written by the deploy (the host has no .git), else git describe."""
    stamp = CODE_ROOT / ".code-version"
    if stamp.is_file():
        return stamp.read_text().strip()
    try:
        out = subprocess.run(["git", "-C", str(CODE_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_json(path):
    return json.loads(Path(path).read_text())
