"""Watching a run from the laptop: the monitor screen, log tail, results, TensorBoard tunnel.

    info = run_state(conn, inv)            # one SSH command (deploy.training)
    render(info, label, console)           # the monitor screen
    follow(conn, inv, info)                # stream train.log until the run ends
    fetch_results(target, inv, run, dest)  # rsync the run back, without backup/
    tunnel(conn, inv, local_port, say)     # TensorBoard on the host's loopback -> localhost
"""

import json
import socket
import time
from pathlib import Path

from invoke.exceptions import ThreadException
from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from deploy.errors import DeployError, HostUnreachable, LocalInputError
from deploy.hosts import rjoin, rq, rsync_target
from deploy.sync import rsync
from deploy.training import run_state, script

STYLES = {"running": "bold green", "starting": "bold cyan", "finished": "bold blue", "failed": "bold red",
          "stopped": "bold yellow", "vanished": "bold red", "none": "dim"}
WHAT_TO_DO = {
    "failed": "The trainer exited with an error (above). Fix it, then resume with `fab train --resume` "
              "or start over with `fab train`. Full log: `fab logs --lines 200`.",
    "vanished": "The tmux session is gone and the run left no exit record: the host rebooted or the process was killed. "
                "Resume from its last finished epoch with `fab train --resume`.",
    "stopped": "Stopped on request; its backup is intact. Continue with `fab train --resume`.",
    "finished": "Done. Bring the results home with `fab fetch-results`.",
    "none": "No training has been started on this host: `fab deploy-full` (or `fab train`).",
}


def _duration(seconds):
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def what_to_do(info):
    """The advice under the monitor screen, from the state and the exit record's reason."""
    reason = (info.get("exit") or {}).get("reason") or ""
    if info["state"] == "failed" and "disk" in reason and "full" in reason:
        return (f"The host's disk is full ({info['disk']['path']}). Free space there first (old runs, `fab fetch-results` "
                "then delete them), then continue with `fab train --resume`: resuming on a full disk fails the same way.")
    if info["state"] == "failed" and "SIGKILL" in reason:
        return (f"The trainer was {reason}. If it ran out of memory, lower train.batch_size or data.max_frames "
                "(or data.cache_in_memory: false), then `fab train --resume`. Full log: `fab logs --lines 200`.")
    return WHAT_TO_DO.get(info["state"])


def T(value):
    """Remote text as plain text: a run name or a log line is never rich markup."""
    return Text(str(value))


def render(info, label, console):
    """The monitor screen: host, GPU, disk, run state, epoch bar, metrics, log tail, what to do."""
    state = info["state"]
    host = Table.grid(padding=(0, 2))
    host.add_row("host", T(f"{label} ({info['host']})"))
    if info["gpus"] is None:
        host.add_row("GPU", "none (no nvidia-smi)")
    for g in info["gpus"] or []:
        host.add_row("GPU", T(g.get("error") or f"{g['name']}  util {g['utilization']}%  memory {g['memory_used_mib']}/{g['memory_total_mib']} MiB"))
    disk = info["disk"]
    free = T(f"{disk['free_bytes'] / 2**30:.1f} GiB of {disk['total_bytes'] / 2**30:.1f} GiB")
    if disk.get("low"):
        free.append(f"  LOW: a full disk fails the run; free space in {disk['path']}", style="bold red")
    host.add_row("disk free", free)
    if info.get("error"):
        host.add_row("error", Text(str(info["error"]), style="red"))
    parts = [host]
    if info.get("run"):
        status = info.get("status") or {}
        exit_record = info.get("exit") or {}
        run = Table.grid(padding=(0, 2))
        headline = Text(state.upper(), style=STYLES.get(state, ""))
        if exit_record:
            headline.append(f"  exit code {exit_record.get('exit_code')} at {exit_record.get('ended_at')}")
            if exit_record.get("reason"):
                headline.append(f": {exit_record['reason']}")
        elif state == "vanished":
            headline.append(f"  tmux session {info['session']} gone, no exit record")
        run.add_row("run", T(f"{info['run']}  ({info.get('run_dir')})"))
        run.add_row("state", headline)
        if status.get("epochs"):
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=status["epochs"], completed=status.get("epoch", 0), width=30),
                        f"epoch {status.get('epoch', 0)}/{status['epochs']}   {status.get('seconds_per_epoch') or '?'} s/epoch"
                        + (f"   ETA {_duration(status.get('eta_seconds'))}" if state == "running" else ""))
            run.add_row("progress", bar)
        last = {k: v for k, v in (status.get("last") or {}).items() if isinstance(v, (int, float))}
        if last:
            keys = [k for k in ("val_uar", "val_accuracy", "val_loss", "uar", "loss", "learning_rate") if k in last]
            run.add_row("last epoch", "   ".join(f"{k} {last[k]:.4g}" for k in keys))
        if status.get("best"):
            best = status["best"]
            run.add_row("best", T(f"{best['metric']} {best['value']:.4f} at epoch {best['epoch']}"))
        if info.get("metrics"):
            m = info["metrics"]
            run.add_row("final", f"accuracy {m['accuracy']:.3f}   UAR {m['uar']:.3f}   macro F1 {m['macro_f1']:.3f}")
        if status.get("error"):
            run.add_row("error", Text(f"{status['error'].get('type')}: {status['error'].get('message')}", style="red"))
        parts += [Text(""), run]
        if info.get("log_tail"):
            parts += [Text(""), Text(f"last lines of {info.get('log')}", style="dim"), Text("\n".join(info["log_tail"]))]
    console.print(Panel(Group(*parts), title=Text(f"facenet-deploy monitor: {state}"), title_align="left", border_style=STYLES.get(state, "")))
    advice = what_to_do(info)
    if advice:  # outside the panel, so the commands copy cleanly
        console.print(Text(advice, style=STYLES.get(state, "")))


def follow(conn, inv, info):
    """Stream the run's train.log until the run ends or Ctrl-C."""
    if not info.get("run_dir"):
        return
    cmd = f"bash {script(inv, 'follow_log.sh')} {rq(info['run_dir'])} {rq(inv.tmux_session)} 20"
    try:
        conn.run(cmd, pty=True, warn=True, in_stream=False)
    except KeyboardInterrupt:
        pass


def tail_log(conn, inv, run, lines):
    info = _run_info(conn, inv, run)
    out = conn.run(f"tail -n {int(lines)} {rq(rjoin(info['run_dir'], 'train.log'))}", hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not read {info['run_dir']}/train.log: {out.stderr.strip()}")
    return info, out.stdout


def _run_info(conn, inv, run):
    info = run_state(conn, inv, run=run, log_lines=0)
    if not info.get("run_dir"):
        raise DeployError(info.get("error") or f"No run on the host in {inv.remote['runs_dir']}: start one with `fab deploy-full`.")
    return info


def fetch_results(target, inv, run, dest, say):
    """rsync RUNS_DIR/<run>/ (without backup/) to DEST/<host>/<run>/; returns (local dir, info)."""
    conn = target.conn
    info = _run_info(conn, inv, run)
    root = Path(dest).resolve()
    local = (root / _safe(target.label) / info["run"]).resolve()
    if not local.is_relative_to(root) or local == root:  # names from the host are checked already; this is the last word
        raise DeployError(f"Refusing to write the run {info['run']!r} outside {root}.")
    local.mkdir(parents=True, exist_ok=True)
    n, _ = rsync(conn, ["--exclude=/backup/", "--exclude=.*.tmp", rsync_target(conn, rjoin(inv.remote["runs_dir"], info["run"])) + "/",
                        f"{local}/"])
    say(f"Fetched run {info['run']} ({info['state']}): {n} file(s) updated in {local}")
    return local, info


def _safe(name):
    safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)
    return "_" + safe if safe.startswith(".") else safe


def read_metrics(local):
    path = Path(local) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def port_free(port):
    """Nothing listens on 127.0.0.1:port (connections of a closed tunnel in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_tensorboard(conn, inv, say):
    tb = inv.tensorboard
    cmd = (f"bash {script(inv, 'tensorboard.sh')} {rq(inv.remote['venv'])} {rq(inv.remote['runs_dir'])} "
           f"{rq(tb['session'])} {int(tb['remote_port'])}")
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"TensorBoard did not start on the host:\n{(out.stdout + out.stderr).strip()[-2000:]}")
    say(out.stdout.strip())


def tunnel(conn, inv, local_port, say):
    """Forward localhost:local_port to TensorBoard on the host's 127.0.0.1 until Ctrl-C."""
    if not port_free(local_port):
        free = next((p for p in range(local_port + 1, local_port + 50) if port_free(p)), None)
        raise LocalInputError(f"Local port {local_port} is already in use (another tunnel or TensorBoard?). "
                              f"Pick another: fab tensorboard-tunnel --local-port {free or local_port + 1}")
    start_tensorboard(conn, inv, say)
    remote_port = int(inv.tensorboard["remote_port"])
    try:
        with conn.forward_local(local_port, remote_port=remote_port, remote_host="127.0.0.1", local_host="127.0.0.1"):
            say(f"TensorBoard: http://localhost:{local_port}/   (tunnel to the host's 127.0.0.1:{remote_port}; Ctrl-C closes it)")
            try:
                while conn.transport.is_active():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    except ThreadException as e:  # a browser connection that broke inside the tunnel: one line, not a traceback
        if conn.transport.is_active():
            say(f"The tunnel closed with an error: {'; '.join(str(w.value) for w in e.exceptions)[:300]}", "yellow")
    conn.check_alive()
    if not conn.transport.is_active():
        raise HostUnreachable(f"Lost the connection to {conn.label}: the tunnel is closed. Run `fab tensorboard-tunnel` again when the host answers.")
    say("Tunnel closed. TensorBoard keeps running on the host (tmux session "
        f"{inv.tensorboard['session']}); `fab tensorboard-tunnel` reconnects.")
