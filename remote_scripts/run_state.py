#!/usr/bin/env python3
"""The run-file format on the host, in one place: the state of a run, and the records around it.

    python3 run_state.py --runs-dir ~/facenet-runs --session facenet-training [--run NAME] [--stall-seconds S] [--quick] [--json]
                         [--wait-start S]   # fab train: answer once the run has left `starting` (or S seconds)
    python3 run_state.py record-launch RUN_DIR PID COMMAND      # launch_training.sh, before the trainer; prints the launch id
    python3 run_state.py record-exit RUN_DIR CODE [LAUNCH_ID [REASON]]   # launch_training.sh, after it
    python3 run_state.py stop RUN_DIR SESSION WAIT_SECONDS      # stop_training.sh
    python3 run_state.py alive RUN_DIR                          # exit 0 while a process of the run lives (follow_log.sh)
    python3 run_state.py fence RUN_DIR LAUNCH_ID REASON         # fab watch: that launch may no longer train the run
    python3 run_state.py activity RUNS_DIR SESSION [STALL_SECONDS]  # fab instances: is it training, since when idle
    python3 run_state.py runs RUNS_DIR                          # fab down: the run folders, with their start and launch
    python3 run_state.py tail FILE LINES [--raw]                # fab logs: the file's last lines (without TensorFlow's C++ lines)
    python3 run_state.py quiet < LOG                            # follow_log.sh: stdin without TensorFlow's C++ lines

Standard library only (it runs with the system python3, even before the venv exists). The files it shares with
host_agent.py (.current, launch.json, the exit records, the agent's files) are read by host_files.py. Its commands
are done by the modules beside it: run_records.py (record-launch, record-exit, fence: the launch and exit records),
run_stop.py (stop), run_log.py (tail, quiet), host_facts.py (the GPUs, the disk, the uptime).

The run is RUNS_DIR/.current unless --run names one. Its state is derived from what the
launcher and the trainer left behind, so a dead run is never mistaken for a missing one:

    exit record, code 0        finished
    exit record, code 5        superseded (fenced: RUN/fenced.json named its launch, the run continues under another one;
                                          it stopped at an epoch end without a result)
    exit record, code 3        stopped   (resumable; `requested` in it when `fab stop` or the budget cap asked: stop() leaves
                                          .stop-request.json for the record, so a shutdown's SIGTERM is told apart)
    exit record with preempted preempted (a spot interruption notice stopped it: host_agent.py)
    exit record, other code    failed    (with a reason: disk-full, killed by a signal, ...)
    processes alive            status.json's state (starting, running), or stalled: status.json
                               not rewritten for the stall threshold while the processes live
    neither                    vanished  (its processes are gone without an exit record: reboot, kill)
    no run at all              none

Alive means: a process of the process group recorded in launch.json lives, and the group is the
launch's (the group leader's start time, /proc/PID/stat field 22, and the boot id match), so a
reused PID is never taken for the run. The tmux session does not count: closing it while the
trainer lives leaves the run running.

The stall threshold is --stall-seconds (the inventory's stall_minutes), else the host agent's
setting, else max(15 minutes, 3 x the slowest epoch so far).

Exit code of the state query: 0 running/starting/finished, 1 failed, 3 stopped, 4 vanished, 5 none,
7 preempted, 8 stalled, 11 superseded.
"""

import argparse
import json
import os
import socket
import sys
import time

import host_files
import storage_state
from host_facts import disk, gpus, uptime
from host_files import (  # the files it shares with host_agent.py (see host_files.py)
    exit_path,
    exit_record,
    progress,
    read_current,
    read_json,
    read_launch,
    session_alive,
    stalled_since,  # noqa: F401 - part of this module's API
)
from liveness import describe_processes, live_processes
from run_format import (  # the run's files and exit codes: one owner for the trainer, the laptop and the host
    CONFIG,
    CURRENT,
    CV,
    LAUNCH,
    LIVE,
    LOG,
    METRICS,
    RECOVERIES,
    RUN_NAME,
    STATUS,
    STOP_REQUEST,  # noqa: F401 - part of this module's API
    STOPPED,
    SUPERSEDED,
)
from run_log import TF_NOISE, quiet, tail  # noqa: F401 - quiet: part of this module's API
from run_records import RunAlive, fence, fenced, record_exit, record_launch  # noqa: F401 - fenced: part of this module's API
from run_stop import stop

EXIT_CODES = {"starting": 0, "running": 0, "finished": 0, "failed": 1, "stopped": 3, "vanished": 4, "none": 5, "preempted": 7,
              "stalled": 8, "superseded": 11}


def derive_state(exit_record, alive, status, stalled=False):
    if exit_record is not None:
        if exit_record.get("preempted"):
            return "preempted"
        code = exit_record.get("exit_code")
        return "finished" if code == 0 else "stopped" if code == STOPPED else "superseded" if code == SUPERSEDED else "failed"
    if alive:  # the trainer may have ended already, its launcher still recording the exit
        state = status["state"] if status and status.get("state") in ("starting", "running", "finished", "failed", "stopped") else "starting"
        return "stalled" if stalled and state in ("starting", "running") else state
    if status and status.get("state") in ("finished", "failed", "stopped"):
        return status["state"]
    return "vanished"


# a run just launched: the trainer checks its data and builds its model, or its launcher has not recorded it yet
STARTING = ("starting", "none", "vanished")


def collect(runs_dir, session, run=None, log_lines=15, stall_seconds=None, quick=False, raw_log=False):
    """The run's state and what the monitor shows with it. `quick`: without the GPUs (nvidia-smi) and
    the host agent, for a task that only asks whether a training runs."""
    runs_dir = os.path.expanduser(runs_dir)
    current = read_current(runs_dir)
    run = run or current
    disk_path = runs_dir if os.path.isdir(runs_dir) else os.path.expanduser("~")
    info = {
        "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpus": None if quick else gpus(),
        "disk": disk(disk_path), "runs_dir": runs_dir, "run": run, "session": session, "state": "none",
        "uptime_seconds": uptime(), "agent": None, "processes": [], "training": False,
    }
    info["agent_alive"] = host_files.agent_running(runs_dir)  # cheap (a pid and its command line): `fab watch` restarts a dead one
    if not quick:
        info["agent"] = host_files.view(runs_dir)
    if run is None:
        return info
    if not RUN_NAME.fullmatch(run):  # a name is a path: never follow one that leaves the runs dir
        info.update(run=None, error=f"invalid run name {run!r} (in {os.path.join(runs_dir, CURRENT)} or --run): "
                                    "expected 1-100 letters, digits, '.', '_' or '-'")
        return info
    run_dir = os.path.join(runs_dir, run)
    if not os.path.isdir(run_dir):
        info.update(state="none", error=f"no run directory {run_dir}")
        return info
    launch = read_launch(run_dir)
    pids = live_processes(launch)
    session_up = run == current and session_alive(session)
    alive = bool(pids) or host_files.alive_without_group(launch, lambda: session_up)  # launched before launch.json held a group
    status = read_json(os.path.join(run_dir, STATUS))
    status = status if isinstance(status, dict) else None
    stale = status is not None and current_status(run_dir, status) is None
    if stale:  # the previous launch's word: its epochs hold, its state and error are not this launch's
        status = {k: v for k, v in status.items() if k not in ("state", "error")}
    record = exit_record(run_dir, launch)
    stall = progress(run_dir, status, stall_seconds, runs_dir) if alive and record is None else None
    info.update(
        run_dir=run_dir, session_alive=session_up, processes=describe_processes(pids), status=status, exit=record,
        launch=launch or None, stall=stall,
        metrics=read_json(os.path.join(run_dir, METRICS)),
        cv=read_json(os.path.join(run_dir, CV)),  # a cross-validation run (trainer/training/cv.py)
        recoveries=(read_json(os.path.join(run_dir, RECOVERIES)) or {}).get("recoveries"),  # `fab watch` moved it here
        state=derive_state(record, alive, status, stalled=bool(stall and stall["stalled"])), stale_status=stale,
        log=os.path.join(run_dir, LOG), log_tail=tail(os.path.join(run_dir, LOG), log_lines, raw_log),
        storage=storage_state.view(run_dir),  # the run's checkpoints in object storage (trainer/storage/uploader.py)
    )
    info["training"] = training(info)
    return info


def training(info):
    """Is it training? A process of the run lives, or (a run launched before launch.json held a process group) its
    state says so. The one answer that `fab monitor`, `fab down`, `fab instances` and `fab watch` read."""
    return bool(info.get("processes")) or info.get("state") in LIVE


def activity(runs_dir, session, stall_seconds=None):
    """`fab instances`' question: {now, boot, heartbeat, run, state, training, run_ended}, from collect (quick) and
    the times that say when the host was last busy: the boot, a fab task's heartbeat, the end of the current run."""
    info = collect(runs_dir, session, log_lines=0, stall_seconds=stall_seconds, quick=True)
    up = info["uptime_seconds"]
    path = exit_path(info["run_dir"], info.get("launch") or {}) if info.get("exit") is not None else None
    ended = host_files.mtime(path) if path else None
    return {"now": time.time(), "boot": time.time() - up if up is not None else None, "run": info["run"], "state": info["state"],
            "training": training(info), "run_ended": ended,
            "heartbeat": host_files.mtime(host_files.files(runs_dir)["heartbeat"]) or None}


def list_runs(runs_dir):
    """[{run, started_at, launch_id}] of the run folders (those holding a config.yaml): what `fab down` weighs."""
    runs_dir = os.path.expanduser(runs_dir)
    try:
        names = sorted(os.listdir(runs_dir))
    except OSError:
        names = []

    def field(run, name, key):
        value = read_json(os.path.join(runs_dir, run, name))
        return value.get(key) if isinstance(value, dict) else None

    return [{"run": n, "started_at": field(n, STATUS, "started_at"), "launch_id": field(n, LAUNCH, "launch_id")}
            for n in names if RUN_NAME.fullmatch(n) and os.path.isfile(os.path.join(runs_dir, n, CONFIG))]


def current_status(run_dir, status):
    """status.json as this launch's word: None while it is older than launch.json (a resumed run's trainer has not
    rewritten it yet, and its `failed` is the previous launch's, not this one's)."""
    try:
        stale = os.stat(os.path.join(run_dir, STATUS)).st_mtime_ns < os.stat(os.path.join(run_dir, LAUNCH)).st_mtime_ns
    except OSError:
        return status
    return None if stale else status


# subcommand -> how many arguments it needs at least (the rest of its usage: the module docstring)
SUBCOMMANDS = {"record-launch": 3, "record-exit": 2, "stop": 3, "alive": 1, "fence": 2, "activity": 2, "runs": 1, "tail": 2,
               "quiet": 0}


def usage(command=None):
    """The docstring's usage lines (of `command`, else of every subcommand)."""
    lines = [line.strip() for line in __doc__.split("\n\n")[1].splitlines() if line.strip().startswith("python3 run_state.py")]
    return [line for line in lines if line.split()[2] == command or (command is None and line.split()[2] in SUBCOMMANDS)]


def records_main(argv):
    command, run_dir = argv[0], argv[1]
    if command == "record-launch":
        try:
            print(record_launch(run_dir, int(argv[2]), argv[3]))
        except RunAlive as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if command == "fence":  # run_state.py fence RUN_DIR LAUNCH_ID REASON   (`fab watch`, when the old host answers again)
        print(json.dumps(fence(run_dir, argv[2], argv[3] if len(argv) > 3 else "")))
        return 0
    if command == "record-exit":
        print(json.dumps(record_exit(run_dir, int(argv[2]), launch_id=argv[3] if len(argv) > 3 and argv[3] else None,
                                     reason=argv[4] if len(argv) > 4 else None)))
        return 0
    if command == "alive":
        return 0 if live_processes(read_launch(run_dir)) else 1
    code, lines = stop(run_dir, argv[2], int(argv[3]))
    print("\n".join(lines))
    return code


def query_parser():
    """The state query's options; --help lists the subcommands too."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="subcommands (instead of the options):\n  " + "\n  ".join(usage()))
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--run")
    p.add_argument("--log-lines", type=int, default=15)
    p.add_argument("--stall-seconds", type=float, help="status.json older than this while the run's processes live: stalled")
    p.add_argument("--quick", action="store_true", help="skip the GPUs and the host agent (is a training running?)")
    p.add_argument("--raw-log", action="store_true", help="the log's last lines as they are (default: without TensorFlow's C++ lines)")
    p.add_argument("--json", action="store_true", help="(the output is always JSON)")
    p.add_argument("--wait-start", type=float, default=0, metavar="S",
                   help="answer once the run is past its start (its first epoch began, or it ended), or after S seconds")
    p.add_argument("--previous-launch", metavar="ID",
                   help="with --wait-start: the run's launch before this one, whose state is never the answer (a resumed "
                        "failed run read as failed before its new launcher had recorded itself)")
    p.add_argument("--recorded-only", action="store_true",
                   help="with --previous-launch: answer once the new launch has recorded itself, whatever its state (a "
                        "worker of a cluster stays starting until every worker joined)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS and len(argv) - 1 < SUBCOMMANDS[argv[0]]:
        print("usage: " + "\n       ".join(usage(argv[0])), file=sys.stderr)
        return 2
    if argv and argv[0] in ("record-launch", "record-exit", "stop", "alive", "fence"):
        return records_main(argv)
    if argv and argv[0] == "activity":  # run_state.py activity RUNS_DIR SESSION [STALL_SECONDS]   (`fab instances`)
        print(json.dumps(activity(argv[1], argv[2], float(argv[3]) if len(argv) > 3 and argv[3] else None)))
        return 0
    if argv and argv[0] == "runs":  # run_state.py runs RUNS_DIR   (`fab down`: the runs its disk holds)
        print(json.dumps(list_runs(argv[1])))
        return 0
    if argv and argv[0] == "tail":  # run_state.py tail FILE LINES [--raw]   (`fab logs`)
        print("\n".join(tail(argv[1], int(argv[2]), raw="--raw" in argv[3:])))
        return 0
    if argv and argv[0] == "quiet":  # run_state.py quiet < LOG   (follow_log.sh: stdin without TensorFlow's C++ lines)
        for line in sys.stdin:
            if not TF_NOISE.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        return 0
    args = query_parser().parse_args(argv)
    query = dict(stall_seconds=args.stall_seconds, quick=args.quick, raw_log=args.raw_log)
    info = collect(args.runs_dir, args.session, args.run, args.log_lines, **query)
    deadline = time.monotonic() + args.wait_start
    old = lambda info: args.previous_launch and (info.get("launch") or {}).get("launch_id") in (args.previous_launch, None)  # noqa: E731
    starting = (lambda info: False) if args.recorded_only else (lambda info: info["state"] in STARTING)  # noqa: E731
    while (starting(info) or old(info)) and time.monotonic() < deadline:
        time.sleep(0.3)
        info = collect(args.runs_dir, args.session, args.run, args.log_lines, **query)
    info["exit_code"] = EXIT_CODES[info["state"]]  # `fab monitor` exits with it too
    if args.wait_start and old(info):
        info["launch_recorded"] = False  # the new launch never recorded itself: `info` is still the previous one's
    print(json.dumps(info))  # trainer/results/run_view.py renders it, on the laptop and on the host
    return info["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
