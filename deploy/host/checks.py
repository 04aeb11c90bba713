"""Before a training, on the host: the data validated with the training config, and the smoke test with its estimate.

    preflight(conn, inv, say)                  # `python -m trainer validate` on the host's data (and its pack)
    smoke_test(conn, inv, say)                 # `python -m trainer smoke`, then the full training's time and cost
"""

from deploy.errors import DeployError, Interrupted
from deploy.host.run_config import send_config
from deploy.host.training import data_args, packed_dir, trainer_step
from deploy.inventory.schema import smoke_dir


def preflight(conn, inv, say):
    """Validate the host's copy of the data with the training config; DeployError with the summary if it cannot train."""
    config = send_config(conn, inv, inv.train_config)
    try:
        out, result = trainer_step(conn, inv, "preflight", "validate", "--config", config, *data_args(inv),
                                   "--pack", packed_dir(inv))
    except DeployError as e:
        raise DeployError(f"The data on the host would not train. {e}\n"
                          "Fix the data or the config (data.feature_key, data.label_map), then run `fab deploy-full` again.") from None
    say(out.stdout.strip())  # the validation summary, for people
    say(result["message"])


SMOKE_STEP = "smoke-test"  # its result on the host (deploy.host.provision.result_path) holds the estimate, which deploy/demo reads


def smoke_test(conn, inv, say, price_per_hour=None):
    """The smoke test, then the estimate of the full training on this host (the smoke run's own timing, and the training
    config's steps timed there: trainer/training/estimate.py)."""
    out_dir = smoke_dir(inv.remote)  # outside runs_dir, TensorBoard's logdir: it lists the real runs only
    try:
        _, result = trainer_step(conn, inv, SMOKE_STEP, "smoke", "--config", send_config(conn, inv, inv.smoke_config, "smoke_config"),
                                 "--out", out_dir, "--estimate-config", send_config(conn, inv, inv.train_config), *data_args(inv))
    except KeyboardInterrupt:  # the step's process group on the host is ended by now (deploy.host.steps.StepRunner)
        raise Interrupted(f"Interrupted the smoke test on {conn.label}: its trainer there was ended and the host's lock released. "
                          "No training was started and nothing a training uses changed (code, data, venv); the unfinished test "
                          f"left a folder under {out_dir} that nothing reads.\nNext: `fab smoke-test` again, or `fab deploy-full` "
                          "(it runs the smoke test before starting the training).") from None
    say(result["message"])
    if result.get("estimate"):
        for line in describe_estimate(result["estimate"], inv.train_config, price_per_hour):
            say(line)


def describe_estimate(est, config, price_per_hour):
    """The estimate's lines (trainer/training/estimate.py): the steps measured here, then the full training's time (the
    trainer's, from its start to its end) with what it is made of, and its cost."""
    hours = est["seconds"] / 3600
    where = f"{est['replicas']} device(s)" + (", mixed precision" if est["mixed_precision"] else "")
    cost = (f", about ${hours * price_per_hour:.2f} at ${price_per_hour:.4g}/h" if price_per_hour
            else " (cost: set price_per_hour, or `fab launch` the host, to see it)")
    parts = est["parts"]
    return [f"measured on this host: {est['seconds_per_step']:.4g} s per training step ({config}: global batch {est['global_batch']}, "
            f"clips padded to ~{est['frames']} frames, {where}); {est['seconds_per_eval_step']:.4g} s per validation step",
            f"estimate of the full training: up to {est['epochs']} epochs x {est['steps_per_epoch']} steps "
            f"(and {est['val_steps_per_epoch']} validation steps) = about {_duration(est['seconds'])}{cost} (early stopping may end it sooner)",
            f"  the trainer's start {_duration(parts['setup'])}, first calls (tracing) {_duration(parts['first_calls'])}, "
            f"epochs {_duration(parts['epochs'])} ({est['seconds_per_epoch']:.3g} s each, checkpoints and logs included), "
            f"scores and pictures at the end {_duration(parts['end'])}"]


def _duration(seconds):
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{max(seconds, 1):.0f} s" if seconds < 90 else f"{minutes} min"
