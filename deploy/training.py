"""The trainer on the host: preflight validation, smoke test, launch in tmux, state, stop.

    preflight(conn, inv, say)                  # `python -m trainer validate` on the host's data
    smoke_test(conn, inv, say)                 # `python -m trainer smoke`
    run = launch(conn, inv, say)               # detached tmux session; returns the run name
    info = run_state(conn, inv, run=None)      # remote_scripts/run_state.py --json

Every path and argument is quoted for the remote shell (see `deploy.hosts.rq`).
"""

import json
import shlex
import time

from deploy.errors import DeployError
from deploy.hosts import rjoin, rq
from deploy.sync import remote_data_dirs


def script(inv, name):
    return rq(rjoin(inv.remote["project_dir"], "remote_scripts", name))


def trainer_cmd(inv, *args):
    """`cd project && venv/bin/python -m trainer ARGS`, quoted."""
    python = rq(rjoin(inv.remote["venv"], "bin/python"))
    words = " ".join(map(rq, args))
    return f"cd {rq(inv.remote['project_dir'])} && TF_CPP_MIN_LOG_LEVEL=2 COLUMNS=120 {python} -m trainer {words}"


def data_args(inv):
    return [w for d in remote_data_dirs(inv) for w in ("--data", d)]


def remote_config(inv, path):
    """A config path of the inventory as the host sees it (relative paths are in the project dir)."""
    return path if path.startswith(("/", "~/")) else rjoin(inv.remote["project_dir"], path)


def preflight(conn, inv, say):
    """Validate the host's copy of the data with the training config; DeployError with the summary if it cannot train."""
    cmd = trainer_cmd(inv, "validate", "--config", remote_config(inv, inv.train_config), *data_args(inv))
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    summary = (out.stdout + out.stderr).strip()
    if out.failed:
        raise DeployError(f"The data on the host would not train (validate exited {out.exited}):\n{summary}\n"
                          "Fix the data or the config (data.feature_key, data.label_map), then run `fab deploy-full` again.")
    say(summary)


def smoke_test(conn, inv, say):
    out_dir = rjoin(inv.remote["runs_dir"], "smoke")
    cmd = trainer_cmd(inv, "smoke", "--config", remote_config(inv, inv.smoke_config), "--out", out_dir, *data_args(inv))
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    text = (out.stdout + out.stderr).strip()
    if out.failed:
        raise DeployError(f"The smoke test failed on the host (exit {out.exited}); its output:\n{text[-4000:]}")
    say(text.splitlines()[-1] if text else "smoke test passed")


def session_alive(conn, session):
    return conn.run(f"tmux has-session -t {shlex.quote('=' + session)}", hide=True, warn=True, in_stream=False).ok


def run_state(conn, inv, run=None, log_lines=15):
    """What remote_scripts/run_state.py says, as a dict (state, exit_code, status, exit, log_tail, gpus, disk)."""
    args = ["--runs-dir", inv.remote["runs_dir"], "--session", inv.tmux_session, "--log-lines", str(log_lines), "--json"]
    if run:
        args += ["--run", run]
    words = " ".join(map(rq, args))
    out = conn.run(f"python3 {script(inv, 'run_state.py')} {words}", hide=True, warn=True, in_stream=False)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise DeployError(f"Could not read the run state on the host (is the code synced? `fab sync-code`): "
                          f"{(out.stderr or out.stdout).strip()[-600:]}") from None


def launch(conn, inv, say, resume=False, restart=False, run_name=None):
    """Start training in the tmux session; refuse while one runs unless `restart`. Returns the run name."""
    session = inv.tmux_session
    if session_alive(conn, session):
        if not restart:
            info = run_state(conn, inv, log_lines=0)
            raise DeployError(f"Training {info.get('run')} is already running in tmux session {session} "
                              f"({info.get('state')}). Watch it with `fab monitor`; replace it with `fab train --restart`.")
        say("Stopping the running training first (--restart)")
        stop(conn, inv, say)
    runs = inv.remote["runs_dir"]
    if resume:
        info = run_state(conn, inv, log_lines=0)
        name = info.get("run")
        if not name or info["state"] == "none":
            raise DeployError(f"Nothing to resume: no run in {runs} on the host. Start one with `fab train`.")
        if info["state"] == "finished":
            raise DeployError(f"Run {name} finished; there is nothing to resume. Start a new one with `fab train`.")
        trainer_args = ["train", "--resume", rjoin(runs, name)]
    else:
        name = run_name or time.strftime("%Y%m%d-%H%M%S")
        trainer_args = ["train", "--config", remote_config(inv, inv.train_config), *data_args(inv), "--out", runs, "--run-name", name]
    run_dir = rjoin(runs, name)
    words = [inv.remote["venv"], inv.remote["project_dir"], run_dir, *trainer_args]
    quoted = " ".join(map(rq, words))
    cmd = (f"mkdir -p {rq(runs)} && tmux new-session -d -s {shlex.quote(session)} "
           f"bash {script(inv, 'launch_training.sh')} {quoted}")
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not start tmux session {session}: {(out.stderr or out.stdout).strip()}")
    time.sleep(1.0)  # a launcher that dies at once (missing venv, bad args) has written exit.json by now
    info = run_state(conn, inv, run=name, log_lines=20)
    if info["state"] in ("failed", "vanished"):
        raise DeployError(f"Training {name} ended at once ({info['state']}); last lines of its log:\n" + "\n".join(info.get("log_tail") or []))
    say(f"Training {'resumed' if resume else 'started'}: run {name} in tmux session {session} on the host ({run_dir})")
    return name


def stop(conn, inv, say, wait=120):
    """Stop the running training gracefully (see remote_scripts/stop_training.sh); harmless when none runs."""
    info = run_state(conn, inv, log_lines=0)
    run_dir = rjoin(inv.remote["runs_dir"], info["run"]) if info.get("run") else inv.remote["runs_dir"]
    cmd = f"bash {script(inv, 'stop_training.sh')} {rq(run_dir)} {shlex.quote(inv.tmux_session)} {int(wait)}"
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    say((out.stdout + out.stderr).strip())
    if out.failed:
        raise DeployError(f"Stopping the training failed (exit {out.exited}).")
