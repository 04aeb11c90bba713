"""The trainer on the host: launch in tmux, state, stop (preflight and the smoke test: deploy.host.checks).

    run = launch(conn, inv, say)               # detached tmux session; returns the run name
    info = run_state(conn, inv, run=None)      # remote_scripts/run_state.py --json
    refuse_while_training(conn, inv, say, task, restart)   # while any process of the run lives

Every path and argument is quoted for the remote shell (see `deploy.host.quoting.rq`).
"""

import json
import shlex
import time

from deploy.errors import DeployError, LocalInputError
from deploy.host.provision import run_with_result
from deploy.host.quoting import PYTHON3, rjoin, rq
from deploy.host.run_config import config_summary, send_config
from deploy.host.sync import remote_data_dirs
from trainer.errors import UserError
from trainer.names import check_run_name
from trainer.run_format import run_format


def script(inv, name):
    return rq(rjoin(inv.remote["project_dir"], "remote_scripts", name))


def trainer_cmd(inv, *args):
    """`cd project && venv/bin/python -m trainer ARGS`, quoted."""
    python = rq(rjoin(inv.remote["venv"], "bin/python"))
    words = " ".join(map(rq, args))
    return f"cd {rq(inv.remote['project_dir'])} && COLUMNS=120 {python} -m trainer {words}"


def data_args(inv):
    return [w for d in remote_data_dirs(inv) for w in ("--data", d)]


def trainer_step(conn, inv, name, *args):
    """`python -m trainer ARGS --result FILE` on the host; returns its JSON result, or raises with its message."""
    out, result = run_with_result(conn, inv, name, trainer_cmd(inv, *args, "--result"))
    if result is None:
        raise DeployError(f"{name} wrote no result on the host (exit {out.exited}); its output:\n{(out.stdout + out.stderr).strip()[-4000:]}")
    if not result["ok"]:
        detail = f"\n{(out.stdout + out.stderr).strip()[-4000:]}" if result["exit_code"] == 1 else ""  # a crash: show the traceback
        raise DeployError(f"{name} failed on the host (exit {result['exit_code']}): {result['message']}{detail}")
    return out, result


def packed_dir(inv):
    """Where preflight packs the clips into one memory-mapped file, which training reads (trainer/data/packed.py)."""
    return rjoin(inv.remote["runs_dir"], ".packed")


def run_state(conn, inv, run=None, log_lines=15, quick=False, missing_ok=False, wait_start=0, previous_launch=None,
              recorded_only=False, raw_log=False):
    """What remote_scripts/run_state.py says, as a dict (state, exit_code, status, exit, processes, stall, log_tail,
    gpus, disk). `quick`: without the GPUs and the host agent (is a training running?); `missing_ok`: None where
    the code is not synced yet (no launcher has run either); `wait_start`: the host answers once the run is past
    its start, or after that many seconds, and never with the state of `previous_launch` (the launch id the run had
    before this one started; `recorded_only`: once that launch recorded itself, whatever its state). The stall threshold
    is the inventory's stall_minutes. `raw_log`: the log's last lines with TensorFlow's C++ lines (left out by default).
    A run name that comes back from the host is checked before anything uses it as a path."""
    args = ["--runs-dir", inv.remote["runs_dir"], "--session", inv.tmux_session, "--log-lines", str(log_lines), "--json"]
    if wait_start:
        args += ["--wait-start", str(wait_start)]
    if wait_start and previous_launch:
        args += ["--previous-launch", previous_launch] + (["--recorded-only"] if recorded_only else [])
    if run:
        args += ["--run", run]
    if getattr(inv, "stall_minutes", None):
        args += ["--stall-seconds", str(inv.stall_minutes * 60)]
    if quick:
        args.append("--quick")
    if raw_log:
        args.append("--raw-log")
    words = " ".join(map(rq, args))
    cmd = f"{PYTHON3} {script(inv, 'run_state.py')} {words}"
    if missing_ok:
        cmd = f"if [ -f {script(inv, 'run_state.py')} ]; then {cmd}; else echo null; fi"
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    try:
        info = json.loads(out.stdout)
    except ValueError:
        info = {"error": (out.stderr or out.stdout).strip()[-600:]}
    return checked_state(info, inv)


def state_request(inv):
    """run_state's arguments for the bookkeeping command's training check (remote_scripts/fab_session.py)."""
    return {"scripts": rjoin(inv.remote["project_dir"], "remote_scripts"), "runs_dir": inv.remote["runs_dir"],
            "session": inv.tmux_session, "stall_seconds": inv.stall_minutes * 60 if getattr(inv, "stall_minutes", None) else None}


def checked_state(info, inv):
    """run_state's answer, its run name checked before anything uses it as a path; None stays None (no code synced)."""
    if info is None:
        return None
    if "error" in info and "state" not in info:
        raise DeployError(f"Could not read the run state on the host (is the code synced? `fab sync-code`): {info['error']}")
    if info.get("run") is not None:
        try:
            check_run_name(info["run"], f"the run name the host reported (in {inv.remote['runs_dir']}/.current)")
        except UserError as e:
            raise DeployError(str(e)) from None
    return info


def training_lives(info):
    """The host's answer to "is it training?" (run_state.py training: a process of the run lives, or, for a run launched
    before launch.json held a process group, its state says so); worked out here from a host whose code predates it."""
    if "training" in info:
        return bool(info["training"])
    return bool(info.get("processes")) or info["state"] in run_format.LIVE


def live_processes_text(info):
    """`pid 1234 (python -m trainer train ...), pid 1240 (...)`, and whether the tmux session is gone."""
    procs = ", ".join(f"pid {p['pid']} ({p['command'][:120] or '?'})" for p in info.get("processes") or [])
    session = "" if info.get("session_alive") else f"; its tmux session {info['session']} is gone"
    return f"live process(es): {procs}{session}" if procs else f"tmux session {info['session']}"


def valid_run_name(name, option="--run-name"):
    """`name` if it is a valid run name, else LocalInputError (exit 2, naming `option`) before anything reaches the host."""
    try:
        return check_run_name(name, option)
    except UserError as e:
        raise LocalInputError(str(e)) from None


def refuse_new_run_name(conn, inv, name, resuming=False):
    """LocalInputError (nothing done on the host yet) if the host holds a run `name` already."""
    if conn.run(f"test -e {rq(rjoin(inv.remote['runs_dir'], name, run_format.CONFIG))}", hide=True, warn=True, in_stream=False).ok:
        what = ("continue it there with `fab train --resume`, or remove it first; nothing was done on the host" if resuming
                else "pick another --run-name, or continue it with `fab train --resume`")
        raise LocalInputError(f"Run {name} already exists on the host in {inv.remote['runs_dir']}: {what}.")


ASK = object()  # refuse_while_training: no run state given, ask the host


def refuse_while_training(conn, inv, say, task, restart, info=ASK):
    """A task that changes code, data or venv must not run while any process of the training lives
    (with or without its tmux session): refuse, or with --restart stop it first (then True).
    `info`: the quick run state the caller has (deploy.host.session), else it is asked here."""
    if info is ASK:
        info = run_state(conn, inv, log_lines=0, quick=True, missing_ok=True)
    if info is None or not training_lives(info):
        return False
    if not restart:
        raise DeployError(f"Training {info.get('run')} is running on the host ({info.get('state')}; {live_processes_text(info)}); "
                          f"`{task}` would change what it uses. Watch it with `fab monitor`, end it with `fab stop`, "
                          f"or `fab {task} --restart` to stop it first.")
    say("Stopping the running training first (--restart)")
    stop(conn, inv, say)
    return True


START_WAIT_SECONDS = 60  # how long `fab train` waits for the trainer's checks: a bad data key fails within it, loudly


def launch(conn, inv, say, resume=False, run_name=None, price_per_hour=None, folds=None, tf_config=None, storage=None):
    """Start training in the tmux session (the caller has refused or stopped a running one). Returns the run name.

    `resume` continues the current run, or `run_name` (a run uploaded from another host: its data
    paths are mapped to this host's data dirs). `price_per_hour` goes into the run's cost record.
    `folds`: a K-fold cross-validation by actor (`python -m trainer cv`) instead of one run.
    `tf_config`: this worker's TF_CONFIG (JSON) when the host is one worker of a cluster. `storage`: the
    uploader's settings (deploy/runs/storage.py launch_settings), which start it beside the trainer."""
    session = inv.tmux_session
    runs = inv.remote["runs_dir"]
    if resume and run_name:
        name = valid_run_name(run_name)
        trainer_args = ["train", "--resume", rjoin(runs, name), *data_args(inv), "--packed", packed_dir(inv)]
    elif resume:
        name = resumable_run(conn, inv)
        # the data dirs too: a run that failed before its data was ready (no split yet) is prepared now, as a new run would be
        trainer_args = ["train", "--resume", rjoin(runs, name), *data_args(inv), "--packed", packed_dir(inv)]
    else:
        name = valid_run_name(run_name or time.strftime("%Y%m%d-%H%M%S"))
        refuse_new_run_name(conn, inv, name)
        command = ["cv", "--folds", str(folds)] if folds else ["train", "--packed", packed_dir(inv)]
        trainer_args = [*command, "--config", send_config(conn, inv, inv.train_config), *data_args(inv), "--out", runs, "--run-name", name]
    if price_per_hour:
        trainer_args += ["--price-per-hour", str(price_per_hour)]
    run_dir = rjoin(runs, name)
    words = [inv.remote["venv"], inv.remote["project_dir"], run_dir, *trainer_args]
    quoted = " ".join(map(rq, words))
    env = "".join(f"{shlex.quote(f'{k}={v}')} " for k, v in (("TF_CONFIG", tf_config), ("FACENET_STORAGE", storage and json.dumps(storage)))
                  if v)
    env = f"env {env}" if env else ""
    # the run's launch before this one (printed first: no command more), whose state the wait below never takes for this one's
    cmd = (f"mkdir -p {rq(runs)} && {{ cat {rq(rjoin(run_dir, run_format.LAUNCH))} 2>/dev/null || true; }} && echo && "
           f"tmux new-session -d -s {shlex.quote(session)} {env}bash {script(inv, 'launch_training.sh')} {quoted}")
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not start tmux session {session}: {(out.stderr or out.stdout).strip()}")
    info = wait_started(conn, inv, say, name, previous_launch_id(out.stdout), cluster=bool(tf_config))
    starting = {"starting": " (still starting: `fab monitor` follows it)", "finished": " (and finished already)"}.get(info["state"], "")
    config = "its own config (RUN/config.yaml)" if resume else f"config {config_summary(inv.train_config)} as on this machine"
    say(f"Training {'resumed' if resume else 'started'}: run {name} with {config}, in tmux session {session} on the host "
        f"({run_dir}){starting}")
    return name


def resumable_run(conn, inv):
    """The host's current run, when `fab train --resume` may continue it; DeployError naming why not."""
    info = run_state(conn, inv, log_lines=0)
    name = info.get("run")
    if not name or info["state"] == "none":
        raise DeployError(f"Nothing to resume: no run in {inv.remote['runs_dir']} on the host. Start one with `fab train`.")
    if info["state"] == "finished":
        raise DeployError(f"Run {name} finished; there is nothing to resume. Start a new one with `fab train`.")
    if info["state"] == "superseded":  # its launch here was fenced: resuming this older copy would make two trainers
        raise DeployError(f"Run {name} on this host was superseded: it continues under another launch (RUN/fenced.json: "
                          f"{failure_text(info)}). `fab runs` says where it is; continue it there, or bring it here with "
                          f"`fab deploy-full --resume-from {name}` after removing this copy.")
    if training_lives(info):  # a second trainer on the same run directory would overwrite its files
        raise DeployError(f"Run {name} is still running on the host ({info['state']}; {live_processes_text(info)}): "
                          "nothing to resume. Watch it with `fab monitor`, or end it with `fab stop` first.")
    return name


def wait_started(conn, inv, say, name, previous, cluster=False):
    """The run's state once its new launch is past its start (`previous`: the launch before it, never taken for this one);
    DeployError when it never recorded itself or ended at once. A worker of a `cluster` starts its first epoch only
    once all have joined: only a launch that died at once is waited for."""
    if cluster:
        time.sleep(1.0)
        # a resumed worker: never the previous launch's state (the wait ends once this launch recorded itself, or its run left starting)
        info = run_state(conn, inv, run=name, log_lines=20, quick=True, wait_start=10 if previous else 0, previous_launch=previous,
                         recorded_only=True)
    else:
        say(f"Waiting for run {name} to start (data checks, model build; at most {START_WAIT_SECONDS} s) ...")
        info = run_state(conn, inv, run=name, log_lines=20, quick=True, wait_start=START_WAIT_SECONDS, previous_launch=previous)
    if info.get("launch_recorded") is False:
        waited = 10 if cluster else START_WAIT_SECONDS
        raise DeployError(f"Training {name} did not start: its launcher recorded no launch within {waited} s (the run's "
                          f"previous launch {previous} is {info['state']}). Last lines of its log:\n" + "\n".join(info.get("log_tail") or []))
    if info["state"] in ("failed", "vanished", "none"):
        cause = failure_text(info) if info["state"] == "failed" else f"it {info['state']}"
        raise DeployError(f"Training {name} ended at once: {cause}\nLast lines of its log (`fab logs --lines 200` for more):\n"
                          + "\n".join(info.get("log_tail") or []))
    return info


def fence(conn, inv, run, launch_id, reason):
    """Fence launch `launch_id` of `run` on this host (remote_scripts/run_state.py fence): its trainer stops at its next
    epoch end without a result, its uploader and agent stand down. True when fenced, or when the host holds no such
    run (nothing to fence); False when the command failed."""
    run_dir = rjoin(inv.remote["runs_dir"], valid_run_name(run))
    cmd = (f"if [ -d {rq(run_dir)} ]; then {PYTHON3} {script(inv, 'run_state.py')} fence {rq(run_dir)} {shlex.quote(launch_id)} "
           f"{shlex.quote(reason)}; fi")
    return conn.run(cmd, hide=True, warn=True, in_stream=False, timeout=60).ok


def failure_text(info):
    """Why the run failed, in one line: its trainer's error, else its exit record's reason (a signal, a full disk), else
    its exit code."""
    status, record = info.get("status") or {}, info.get("exit") or {}
    return ((status.get("error") or {}).get("message") or record.get("reason") or f"exit {record.get('exit_code')}")[:300]


def previous_launch_id(text):
    """The launch id in the launch.json printed before a launch (None: the run had none, or it is unreadable)."""
    try:
        launch_id = json.loads(text.strip().splitlines()[0]).get("launch_id")
    except (ValueError, IndexError, AttributeError):
        return None
    return launch_id if isinstance(launch_id, str) else None


def stop(conn, inv, say, wait=120):
    """Stop the running training (see remote_scripts/run_state.py stop); harmless when none runs.
    DeployError if any process of the training survives."""
    info = run_state(conn, inv, log_lines=0)
    run_dir = rjoin(inv.remote["runs_dir"], info["run"]) if info.get("run") else inv.remote["runs_dir"]
    cmd = f"bash {script(inv, 'stop_training.sh')} {rq(run_dir)} {shlex.quote(inv.tmux_session)} {int(wait)}"
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    say((out.stdout + out.stderr).strip())
    if out.failed:
        raise DeployError(f"Stopping the training failed (exit {out.exited}): see above. Do not start another training until "
                          "nothing of this one runs.")
