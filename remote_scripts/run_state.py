#!/usr/bin/env python3
"""The state of a training run on this host, in one look: what `fab monitor` asks over SSH.

    python3 run_state.py --runs-dir ~/facenet-runs --session facenet-training [--run NAME] [--json]

Standard library only (it runs with the system python3, even before the venv exists).
The run is RUNS_DIR/.current unless --run names one. Its state is derived from what the
launcher and the trainer left behind, so a dead run is never mistaken for a missing one:

    exit.json, code 0          finished
    exit.json, code 3          stopped   (on request; resumable)
    exit.json, other code      failed
    tmux session alive         status.json's state (starting, running)
    neither                    vanished  (session gone without an exit record: reboot, kill)
    no run at all              none

Exit code: 0 running/starting/finished, 1 failed, 3 stopped, 4 vanished, 5 none.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

EXIT_CODES = {"starting": 0, "running": 0, "finished": 0, "failed": 1, "stopped": 3, "vanished": 4, "none": 5}


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def tail(path, lines):
    """The last `lines` lines of a text file, reading only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
    except OSError:
        return []
    text = data.decode("utf-8", "replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def gpus():
    """nvidia-smi's view, or None where there is no nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    query = "name,utilization.gpu,memory.used,memory.total"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return [{"error": str(e)}]
    if out.returncode != 0:
        return [{"error": (out.stderr or out.stdout).strip()}]
    rows = []
    for line in out.stdout.strip().splitlines():
        name, util, used, total = (v.strip() for v in line.split(","))
        rows.append({"name": name, "utilization": util, "memory_used_mib": used, "memory_total_mib": total})
    return rows


def session_alive(session):
    try:
        return subprocess.run(["tmux", "has-session", "-t", f"={session}"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def derive_state(exit_record, alive, status):
    if exit_record is not None:
        code = exit_record.get("exit_code")
        return "finished" if code == 0 else "stopped" if code == 3 else "failed"
    if alive:
        return status["state"] if status and status.get("state") in ("starting", "running") else "starting"
    if status and status.get("state") in ("finished", "failed", "stopped"):
        return status["state"]
    return "vanished"


def collect(runs_dir, session, run=None, log_lines=15):
    runs_dir = os.path.expanduser(runs_dir)
    current = None
    try:
        with open(os.path.join(runs_dir, ".current")) as f:
            current = f.read().strip() or None
    except OSError:
        pass
    run = run or current
    disk_path = runs_dir if os.path.isdir(runs_dir) else os.path.expanduser("~")
    usage = shutil.disk_usage(disk_path)
    info = {
        "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpus": gpus(),
        "disk": {"path": disk_path, "free_bytes": usage.free, "total_bytes": usage.total},
        "runs_dir": runs_dir, "run": run, "session": session, "state": "none",
    }
    if run is None:
        return info
    run_dir = os.path.join(runs_dir, run)
    if not os.path.isdir(run_dir):
        info.update(state="none", error=f"no run directory {run_dir}")
        return info
    alive = run == current and session_alive(session)
    status = read_json(os.path.join(run_dir, "status.json"))
    exit_record = read_json(os.path.join(run_dir, "exit.json"))
    info.update(
        run_dir=run_dir, session_alive=alive, status=status, exit=exit_record,
        launch=read_json(os.path.join(run_dir, "launch.json")),
        metrics=read_json(os.path.join(run_dir, "metrics.json")),
        state=derive_state(exit_record, alive, status),
        log=os.path.join(run_dir, "train.log"), log_tail=tail(os.path.join(run_dir, "train.log"), log_lines),
    )
    return info


def as_text(info):
    out = [f"host {info['host']}  {info['time']}"]
    if info["gpus"] is None:
        out.append("GPU: none (no nvidia-smi)")
    for g in info["gpus"] or []:
        out.append(f"GPU: {g['error']}" if "error" in g else
                   f"GPU: {g['name']}  util {g['utilization']}%  memory {g['memory_used_mib']}/{g['memory_total_mib']} MiB")
    out.append(f"disk free: {info['disk']['free_bytes'] / 2**30:.1f} GiB of {info['disk']['total_bytes'] / 2**30:.1f} GiB ({info['disk']['path']})")
    if info["run"] is None:
        out.append(f"no run yet in {info['runs_dir']}")
        return "\n".join(out)
    status = info.get("status") or {}
    out.append(f"run {info['run']}: {info['state'].upper()}  (tmux session {info['session']} "
               f"{'alive' if info.get('session_alive') else 'not running'})")
    if status:
        eta = status.get("eta_seconds")
        out.append(f"epoch {status.get('epoch')}/{status.get('epochs')}  {status.get('seconds_per_epoch') or '?'} s/epoch"
                   + (f"  ETA {eta / 60:.1f} min" if eta else ""))
        last = status.get("last") or {}
        if last:
            out.append("last: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(last.items()) if isinstance(v, (int, float))))
        if status.get("best"):
            b = status["best"]
            out.append(f"best: {b['metric']} {b['value']:.4f} at epoch {b['epoch']}")
        if status.get("error"):
            out.append(f"error: {status['error'].get('type')}: {status['error'].get('message')}")
    if info.get("exit"):
        out.append(f"exit code {info['exit'].get('exit_code')} at {info['exit'].get('ended_at')}")
    out.append(f"--- last lines of {info.get('log')}")
    out.extend(info.get("log_tail") or ["(empty)"])
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--run")
    p.add_argument("--log-lines", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    info = collect(args.runs_dir, args.session, args.run, args.log_lines)
    info["exit_code"] = EXIT_CODES[info["state"]]  # `fab monitor` exits with it too
    print(json.dumps(info) if args.json else as_text(info))
    return info["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
