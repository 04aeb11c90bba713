"""One training run, from data directories to a run directory that explains itself.

    run_dir = new_run(cfg, ["data/crema-d"], "runs", run_name=None)   # runs/20261124-101500/
    execute(run_dir, data_dirs=["data/crema-d"])                       # trains; raises on failure
    execute(run_dir, resume=True)                                      # continues from backup/

A run directory holds config.yaml, manifest.json, split.json, normalization.npz,
best.keras, backup/ (until it finishes), logs/ (TensorBoard), history.csv, train.log,
environment.json, status.json and, at the end, metrics.json (the chief's end of the run: finish.py).
"""

import json
import platform
import signal
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

from trainer.config import dump_config, load_config
from trainer.errors import PeerLost, Superseded, UserError
from trainer.results.report import make_console
from trainer.results.runfiles import refuse_special_entries
from trainer.run_format import run_format
from trainer.training.environment import environment
from trainer.training.fence import fence_check
from trainer.training.finish import finish_run
from trainer.training.logfile import tee_to
from trainer.training.status import RunStatus, now_iso, write_json_atomic


class Stopped(BaseException):
    """The run ended early because it was asked to (SIGTERM/SIGINT); its backup is intact.

    A BaseException, like KeyboardInterrupt: raised wherever the trainer is, never swallowed by `except Exception`."""

    exit_code = run_format.STOPPED


def new_run(cfg, runs_dir, run_name=None):
    """Create the run directory and save the resolved configuration in it."""
    name = run_name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_dir) / name
    if (run_dir / run_format.CONFIG).exists():  # the deploy launcher may have created it, with train.log
        raise UserError(f"Run directory {run_dir} already exists. Pick another --run-name, or --resume {run_dir}.")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / run_format.CONFIG).write_text(dump_config(cfg))
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
    if not (run_dir / run_format.CONFIG).is_file():
        raise UserError(f"{run_dir} has no config.yaml: not a run directory.")
    if resume:
        refuse_finished(run_dir)
    cfg = load_config(run_dir / run_format.CONFIG, [f"train.epochs={epochs}"] if epochs else [])
    (run_dir / run_format.CONFIG).write_text(dump_config(cfg))
    _stop_at_once_until_training_starts(run_dir)
    with tee_to(run_dir / run_format.LOG):
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
    """UserError (exit 2) for a finished run: resuming it would train it again from its start, its backup being gone,
    and rewrite its history, best model and metrics. Nothing is written. (A cross-validation's own check:
    cv.refuse_finished_cv.)"""
    run_dir = Path(run_dir)
    try:
        state = json.loads((run_dir / run_format.STATUS).read_text()).get("state")
    except (OSError, ValueError, AttributeError):
        state = None
    if (run_dir / run_format.METRICS).is_file() or state == "finished":
        raise UserError(f"run {run_dir.name} is finished; start a new run (its results: {run_dir / run_format.METRICS}). "
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
    prepared = all((run_dir / name).is_file() for name in (run_format.SPLIT, run_format.MANIFEST, run_format.NORMALIZATION))
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
    """Prepare the data, set up the devices and the cluster, fit; the chief then scores and records the run."""
    prepared = _prepare_data(cfg, run_dir, data_dirs, resume, console, test_actors)
    from trainer.training import distribute, peers  # after validation: a bad data dir fails fast, without loading TensorFlow

    distribute.configure_devices()
    cluster = distribute.read_cluster()
    timeout = cfg["train"]["collective_timeout"]
    nobody_came = (f"the workers of {', '.join(cluster['workers'])} did not all join within train.collective_timeout "
                   f"({timeout} s): is every worker started, and can each reach the others' worker port? Their own train.log says."
                   if cluster else "")
    watch = peers.Watchdog(timeout, status.path, nobody_came) if cluster else peers.NoWatchdog()
    try:
        strategy, distribution, env = _set_up(cfg, run_dir, prepared, cluster, status, console, watch)
        chief = distribute.worker_index(strategy) == 0
        history, model, val_gen, started = _fit(cfg, run_dir, prepared, strategy, distribution, chief, status, console, resume, packed_dir,
                                                watch)
    except Exception as e:
        if not peers.lost_peer(e, len(cluster["workers"]) if cluster else 1):
            raise
        own = (cluster or {}).get("index", 0)
        raise PeerLost(f"worker {own} lost contact with {peers.peer_hint(e, own)} ({type(e).__name__}) and "
                       f"stopped; the failed worker's own record says why. Resume every worker with: "
                       f"python -m trainer train --resume {run_dir}", cause=type(e).__name__, local=peers.local_failure(e)) from None
    finally:
        watch.close()
    if not chief:
        status.update(state="finished", eta_seconds=0, weights_sha256=history.weights_sha256)
        console.print(f"Worker {distribution['worker']} done; the chief writes the model and the metrics.")
        return
    finish_run(cfg, run_dir, prepared, model, val_gen, status, distribution, len(env["gpus"]), history, started, console)


def _prepare_data(cfg, run_dir, data_dirs, resume, console, test_actors):
    """The run's data: prepared now for a new run (or a resumed one lost before its data was ready), else read back."""
    from trainer.data import pipeline as data

    if resume and never_prepared(run_dir) and data_dirs:  # lost before its data was ready: no epoch, no split yet
        console.print(f"Run {run_dir.name} ended before its data was prepared (no backup, no split yet): preparing it now "
                      "with its config and seed, as a new run would")
        return data.prepare(cfg, data_dirs, run_dir, console, test_actors=test_actors)
    if resume:
        return data.load_prepared(run_dir, data_dirs, console)
    if not data_dirs:
        raise UserError("No data: pass --data DIR (one or more).")
    return data.prepare(cfg, data_dirs, run_dir, console, test_actors=test_actors)


def _set_up(cfg, run_dir, prepared, cluster, status, console, watch):
    """(strategy, distribution, environment): this run's devices and workers, its seed and precision, environment.json."""
    import keras

    from trainer.training import distribute, peers

    timeout = cfg["train"]["collective_timeout"]
    strategy = distribute.choose_strategy(cfg["train"]["distribute"], cluster, peer_timeout=timeout)
    _stop_at_once_until_training_starts(run_dir)  # TensorFlow's preemption notifier took SIGTERM over: take it back
    keras.utils.set_random_seed(cfg["seed"])
    distribution = distribute.describe(strategy, cfg["train"]["batch_size"], cluster)
    if distribute.worker_count(strategy) > 1:
        distribute.same_data_as_the_chief(strategy, prepared, distribution)
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
    return strategy, distribution, env


def _fit(cfg, run_dir, prepared, strategy, distribution, chief, status, console, resume, packed_dir=None, watchdog=None):
    """Build the model under `strategy` and train it; the chief alone writes the run's shared files
    (best.keras, backup/, logs/, history.csv), every worker its own status.json."""
    from trainer.data import pipeline as data
    from trainer.training import loop
    from trainer.training.model import build_model, class_weights, compile_model, cudnn_problems

    train_gen, val_gen = data.generators(cfg, prepared, batch_size=distribution["global_batch_size"], packed_dir=packed_dir, console=console)
    classes = cfg["data"]["classes"]
    with strategy.scope():
        model = compile_model(build_model(cfg["model"], len(classes), cfg["data"]["feature_dim"]), cfg["train"], len(classes))
    for problem in cudnn_problems(model):
        console.print(f"[yellow]warning[/]: LSTM will not use the cuDNN kernel: {problem}")
    callbacks, resume_state, stop = _callbacks(cfg, run_dir, chief, status, console)
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


def _callbacks(cfg, run_dir, chief, status, console):
    """(the fit's callbacks in their order, its ResumeState, its GracefulStop): the chief's write the run's shared files
    (best.keras, backup/, logs/, history.csv); another worker's take the same decisions from the same numbers."""
    import keras

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
    from trainer.training.model import load_model

    classes, monitor = cfg["data"]["classes"], cfg["train"]["monitor"]
    mode = "min" if monitor.endswith("loss") else "max"
    stop = GracefulStop()
    best_path = run_dir / run_format.BEST_MODEL
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
            *([ConfusionImages(checkpoint, classes, run_dir / "logs")] if cfg["train"]["pictures"] else []),
            early_stopping,
            reduce_lr,
            keras.callbacks.TensorBoard(str(run_dir / "logs")),
            # the epoch's row before its backup: a kill between the two leaves a row past the backup's epoch, which the
            # resume removes and writes again; the other way round it left the run's history without that epoch's row
            SafeCSVLogger(str(run_dir / run_format.HISTORY), append=True),  # never through a link
            # after the checkpoint, early stopping and the LR schedule (it saves and restores their state with the
            # weights); a kill during its save leaves the previous epoch's backup to resume from
            RunBackup(run_dir / "backup", resume_state, log=console.print, history=run_dir / run_format.HISTORY),
        ]
    else:  # the same decisions from the same numbers, and no file of the run's
        resume_state = ResumeState(None, early_stopping, reduce_lr)
        writers = [early_stopping, reduce_lr]
    callbacks = [LearningRateLogger(), *writers, StatusCallback(status, monitor, mode), stop]
    return callbacks, resume_state, stop
