"""A sweep's hosts from the laptop: prepare them, give each its queue, start its runner, read its state.

    prepare(inv, names, say)                                # `fab -H NAME [provision] sync-code sync-data`, all at once
    put_queue(target, hinv, record, runs, say, why)         # the runs' claims (storage), then RUNS_DIR/.sweeps/NAME/queue.json
    start_runner(target.conn, hinv, name)                   # the host's runner in tmux, unless one runs
    seen = queue_status(target.conn, hinv, name)            # {"runner": {...}, "runs": {run: {...}}}
    taken = take(target.conn, hinv, name, run)              # the run off that host's queue, unless it started it there

Every remote argument is quoted (deploy.host.quoting); the host answers in JSON (remote_scripts/sweep_queue.py).
"""

import json
import shlex
import subprocess

from deploy.errors import DeployError, HostUnreachable, LocalInputError
from deploy.host import agent, training
from deploy.host.provision import result_path
from deploy.host.quoting import PYTHON3, rjoin, rq
from deploy.host.run_config import send_config
from deploy.host.training import data_args, packed_dir, script
from deploy.recovery.move import fab_program
from deploy.runs import storage
from deploy.sweep import claims
from trainer.results.visible import visible
from trainer.run_format import run_format


def queue_dir(hinv, name):
    return rjoin(hinv.remote["runs_dir"], ".sweeps", name)


def runner_session(hinv, name):
    return f"{hinv.tmux_session}-sweep-{name}"[:100]


def queue_command(conn, hinv, *words):
    """`python3 sweep_queue.py WORDS` on the host; its JSON answer. DeployError with what it said when it has none."""
    cmd = f"{PYTHON3} {script(hinv, 'sweep_queue.py')} " + " ".join(map(rq, words))
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(f"sweep_queue.py {words[0]} on {conn.label} gave no answer (exit {out.exited}; is the code synced? "
                          f"`fab sync-code`): {(out.stderr or out.stdout).strip()[-600:]}") from None


def prepare(inv, names, say, provision=()):
    """Code and data synced to every host at once (`fab -H NAME sync-code sync-data`, with provision first on the hosts
    named in `provision`), each as a process of its own (its lock, its exit code); DeployError naming those that failed."""
    procs = {}
    for name in names:
        tasks = (["provision"] if name in provision else []) + ["sync-code", "sync-data"]
        say(f"  {name}: fab -H {name} {' '.join(tasks)}", "dim")
        procs[name] = subprocess.Popen([fab_program(), "-H", name, *tasks], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, stdin=subprocess.DEVNULL)
    failed, codes = [], set()
    for name, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            codes.add(proc.returncode)
            failed.append(f"{name} (exit {proc.returncode}): {visible(out.strip()[-800:])}")
    if failed:  # every host unreachable or refusing input: that exit code (6, 2), else 1
        code = codes.pop() if len(codes) == 1 else None
        error = {HostUnreachable.exit_code: HostUnreachable, LocalInputError.exit_code: LocalInputError}.get(code, DeployError)
        raise error("Preparing the sweep's hosts failed: " + "; ".join(failed))


def holds_run(conn, hinv, run):
    """The host has run `run` (its config.yaml): an upload there was done already."""
    path = rjoin(hinv.remote["runs_dir"], run, run_format.CONFIG)
    return conn.run(f"test -e {rq(path)}", hide=True, warn=True, in_stream=False).ok


HELD = ("import json, os, sys; d = os.path.expanduser(sys.argv[1]); "
        "print(json.dumps([r for r in sys.argv[2:] if os.path.lexists(os.path.join(d, r))]))")


def held_runs(conn, hinv, runs):
    """The names of `runs` that the host's runs folder holds already (as JSON from the host)."""
    out = conn.run(f"{PYTHON3} -c {rq(HELD)} " + " ".join(rq(w) for w in (hinv.remote["runs_dir"], *runs)), hide=True, warn=True,
                   in_stream=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(f"Could not list the runs on {conn.label} (exit {out.exited}): {(out.stderr or '').strip()[-400:]}") from None


def run_task(name, *tasks):
    """`fab -H NAME TASKS` as a process of its own (its lock, its exit code); DeployError with its output's end if it fails."""
    proc = subprocess.run([fab_program(), "-H", name, *tasks], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DeployError(f"fab -H {name} {' '.join(tasks)} exited {proc.returncode}: {visible(proc.stdout.strip()[-1200:])}")


def entry(conn, hinv, run, folds):
    """A queue entry: the trainer's words for the run, new and resumed, as `fab train` launches them."""
    config = send_config(conn, hinv, run["config"], key=f"the sweep's config of {run['run']}")
    run_dir = rjoin(hinv.remote["runs_dir"], run["run"])
    command = ["cv", "--folds", str(folds)] if folds else ["train", "--packed", packed_dir(hinv)]
    new = [*command, "--config", config, *data_args(hinv), "--out", hinv.remote["runs_dir"], "--run-name", run["run"]]
    resume = ["train", "--resume", run_dir, *data_args(hinv), "--packed", packed_dir(hinv)]
    return {"run": run["run"], "new": new, "resume": resume}


def put_queue(target, hinv, record, runs, say, why="queued"):
    """The host's queue: `runs` (each {"run", "config"}) added to it, the launch's settings (venv, storage, price) with
    them, the host agent configured as `fab train` does first. With run storage, each run's claim is written first,
    naming this host (`why`: queued, moved from a lost host, taken by an idle one). Returns the queue's run names."""
    conn, label = target.conn, target.label
    claims.write(hinv, record, [run["run"] for run in runs], label, why)
    agent.configure(conn, hinv, label, autostop=agent.inventory_autostop(hinv))
    env = {}
    settings = storage.launch_settings(conn, hinv, label, None, lambda *a, **k: None)
    if settings:
        env["FACENET_STORAGE"] = json.dumps(settings)
    price = hinv.price_of(label)
    entries = [entry(conn, hinv, run, record["folds"]) for run in runs]
    if price:
        for e in entries:
            e["new"] += ["--price-per-hour", str(price)]
            e["resume"] += ["--price-per-hour", str(price)]
    queue = {"sweep": record["name"], "host": label, "runs_dir": hinv.remote["runs_dir"], "session": hinv.tmux_session,
             "launcher": ["bash", rjoin(hinv.remote["project_dir"], "remote_scripts", "launch_training.sh"), hinv.remote["venv"],
                          hinv.remote["project_dir"]], "env": env, "entries": entries}
    return queue_command(conn, hinv, "put", queue_dir(hinv, record["name"]), json.dumps(queue))["entries"]


def start_runner(conn, hinv, name):
    """The host's runner of the sweep in a tmux session of its own, unless it runs (its lock keeps a second one out)."""
    session = shlex.quote(runner_session(hinv, name))
    cmd = (f"tmux has-session -t {session} 2>/dev/null || tmux new-session -d -s {session} "
           f"{PYTHON3} {script(hinv, 'sweep_queue.py')} run {rq(queue_dir(hinv, name))}")
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not start the sweep's runner on {conn.label} (tmux session {runner_session(hinv, name)}): "
                          f"{(out.stderr or out.stdout).strip()[-400:]}")


def queue_status(conn, hinv, name):
    return queue_command(conn, hinv, "status", queue_dir(hinv, name))


def take(conn, hinv, name, run):
    return queue_command(conn, hinv, "take", queue_dir(hinv, name), run).get("taken", False)


def smoke_estimate(conn, hinv):
    """The estimate of the host's last smoke test (its result on the host: deploy.host.checks), or None."""
    out = conn.run(f"cat {rq(result_path(hinv.remote, 'smoke-test'))}", hide=True, warn=True, in_stream=False)
    try:
        return json.loads(out.stdout).get("estimate") if out.ok else None
    except (ValueError, AttributeError):
        return None


def fence(conn, hinv, run, launch_id, reason):
    """The launch of `run` left on a host that was lost, fenced now that it answers (as `fab watch` does)."""
    return training.fence(conn, hinv, run, launch_id, reason)
