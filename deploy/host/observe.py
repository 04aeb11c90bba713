"""Watching a run from the laptop: the monitor screen, log tail, results, TensorBoard tunnel.

    info = run_state(conn, inv)            # one SSH command (deploy.host.training)
    render(info, label, console)           # the monitor screen: trainer.results.run_view, shared with the host
    follow(conn, inv, info)                # stream train.log until the run ends
    fetch_results(target, inv, run, dest)  # rsync the run back (backup/ only when asked)
    tunnel(conn, inv, local_port, say)     # TensorBoard on the host's loopback -> localhost
"""

import json
import socket
import sys
import time
from pathlib import Path

from invoke.exceptions import ThreadException

from deploy.errors import DeployError, HostUnreachable, LocalInputError
from deploy.host.connection import rsync_target
from deploy.host.quoting import PYTHON3, rjoin, rq
from deploy.host.sync import RUN_FILES_ONLY, rsync
from deploy.host.training import run_state, script
from trainer.results.visible import VisibleStream, visible
from trainer.run_format import run_format


def follow(conn, inv, info, raw=False):
    """Stream the run's train.log until the run ends or Ctrl-C, its control characters made visible (and without
    TensorFlow's C++ log lines unless `raw`)."""
    if not info.get("run_dir"):
        return
    cmd = f"bash {script(inv, 'follow_log.sh')} {rq(info['run_dir'])} {rq(inv.tmux_session)} 20" + (" raw" if raw else "")
    try:
        conn.run(cmd, pty=True, warn=True, in_stream=False, out_stream=VisibleStream(sys.stdout), err_stream=VisibleStream(sys.stderr))
    except KeyboardInterrupt:
        pass


def tail_log(conn, inv, run, lines, raw=False):
    """(run info, the last `lines` lines of its train.log: without TensorFlow's C++ log lines unless `raw`)."""
    info = _run_info(conn, inv, run)
    log = rq(rjoin(info["run_dir"], run_format.LOG))
    cmd = f"tail -n {int(lines)} {log}"
    if not raw:  # a host whose code predates `run_state.py tail` (a training keeps sync-code away) shows the file as it is
        cmd = f"{PYTHON3} {script(inv, 'run_state.py')} tail {log} {int(lines)} 2>/dev/null || {cmd}"
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not read {info['run_dir']}/train.log: {out.stderr.strip()}")
    return info, out.stdout


def _run_info(conn, inv, run):
    info = run_state(conn, inv, run=run, log_lines=0)
    if not info.get("run_dir"):
        raise DeployError(info.get("error") or f"No run on the host in {inv.remote['runs_dir']}: start one with `fab deploy-full`.")
    return info


def fetch_results(target, inv, run, dest, say, backup=False):
    """rsync RUNS_DIR/<run>/ (backup/ only with `backup`) to DEST/<host>/<run>/; returns (local dir, info)."""
    conn = target.conn
    info = _run_info(conn, inv, run)
    root = Path(dest).resolve()
    local = (root / _safe(target.label) / info["run"]).resolve()
    if not local.is_relative_to(root) or local == root:  # names from the host are checked already; this is the last word
        raise DeployError(f"Refusing to write the run {info['run']!r} outside {root}.")
    remote = rjoin(inv.remote["runs_dir"], info["run"])
    refuse_special_entries(conn, remote, info["run"])
    local.mkdir(parents=True, exist_ok=True)
    excluded = ["--exclude=.*.tmp"] + ([] if backup else ["--exclude=/backup/", "--exclude=/fold-*/backup/"])  # a CV run's folds too
    n, _ = rsync(conn, [*RUN_FILES_ONLY, *excluded, rsync_target(conn, remote) + "/", f"{local}/"])
    say(f"Fetched run {info['run']} ({info['state']}{', with its backup' if backup else ''}): {n} file(s) updated in {local}")
    return local, info


def refuse_special_entries(conn, remote, run):
    """DeployError naming every entry of the host's run dir `remote` that is not a regular file or folder
    (a link, FIFO, socket, device): a run comes home as regular files and folders only."""
    out = conn.run(f"find -P {rq(remote)} -mindepth 1 ! -type f ! -type d -printf '%y\\0%P\\0%l\\0'", hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not list the run directory {remote} on the host: {out.stderr.strip()[-600:]}")
    fields = out.stdout.split("\0")
    kinds = {"l": "a link", "p": "a FIFO", "s": "a socket", "b": "a block device", "c": "a character device"}
    found = []
    for kind, path, target in zip(fields[0::3], fields[1::3], fields[2::3]):
        what = kinds.get(kind, "not a regular file") + (f" to {visible(target, '')}" if target else "")
        found.append(f"{visible(path, '')} ({what})")
    if found:
        raise DeployError(f"Refusing to fetch run {run}: its directory on the host ({remote}) holds {len(found)} "
                          f"entr{'y' if len(found) == 1 else 'ies'} that {'is' if len(found) == 1 else 'are'} not a regular file or folder: "
                          f"{', '.join(found[:10])}{' ...' if len(found) > 10 else ''}. Nothing was fetched; a run directory "
                          "holds regular files and folders only: look at what put them there, remove them, and fetch again.")


def _safe(name):
    safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)
    return "_" + safe if safe.startswith(".") else safe


def read_json(path):
    """A fetched JSON file (metrics.json, cv.json), or None if the run has not written it."""
    path = Path(path)
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
            try:  # someone is looking: the task's keeper (deploy.host.agent.Keeper) keeps autostop waiting meanwhile
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
