"""Code and data to the host with rsync: only what changed, verified, resumable.

    sync_code(target, inv, say)     # trainer/, remote_scripts/, configs/, setup files; --delete
    check_local_data(inv)           # before any upload: every data dir exists and holds *.npz
    sync_data(target, inv, say)     # remote.data_dir/<dir name>/ mirrors each local dir, then verify
    upload_run(target, inv, run, say)   # a fetched run (with backup/) to continue on this host

rsync keeps partial files in `.rsync-partial/` so an interrupted upload resumes where it
stopped; the verification compares file counts and bytes on both sides. A data folder that an
upload may change holds `.facenet-upload-incomplete` (what is expected, JSON) from before rsync
starts until the host holds the same files and bytes: an upload interrupted between two files
leaves no partial file, and the trainer refuses a folder that holds the marker (trainer/data/validation.py). A run travels as
regular files and folders only (RUN_FILES_ONLY): a link in it is refused, never recreated.
"""

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from deploy.errors import DeployError, HostUnreachable, Interrupted, LocalInputError
from deploy.host.connection import rsync_target, ssh_command
from deploy.host.quoting import rjoin, rq
from deploy.paths import REPO_ROOT
from trainer.errors import UserError
from trainer.names import check_run_name
from trainer.results import runfiles
from trainer.results.runfiles import check_run_paths
from trainer.run_format import run_format

CODE_PATHS = ["trainer/", "remote_scripts/", "configs/", "setup.cfg", "pyproject.toml", "README.md"]
PARTIAL_DIR = run_format.UPLOAD_PARTIAL_DIR
UPLOAD_MARKER = run_format.UPLOAD_MARKER  # in a data folder on the host while an upload into it is not verified
# a run's files between hosts: never a link, device or FIFO, even one that appears after the check
RUN_FILES_ONLY = ["--no-links", "--no-devices", "--no-specials"]
RSYNC_CONNECTION_CODES = {12: "the connection closed mid-transfer", 30: "timed out sending or receiving data",
                          35: "timed out waiting for the host", 255: "SSH failed"}


def rsync(conn, args, show_progress=False):
    """Run rsync over `conn`'s SSH settings; returns (regular files transferred, bytes sent as rsync writes it)."""
    stats = rsync_stats(conn, args, show_progress)
    return stats["transferred"], stats["sent"]


def rsync_stats(conn, args, show_progress=False):
    """rsync as `rsync` runs it; returns {transferred, sent, deleted}: regular files transferred, bytes sent as
    rsync writes it, and files deleted (None where this rsync does not say)."""
    cmd = ["rsync", "-a", "--protect-args", "--stats", f"--timeout={conn.rsync_timeout}", "-e", ssh_command(conn), *args]
    if show_progress:
        cmd.insert(1, "--info=progress2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    stats, live = [], show_progress and sys.stdout.isatty()
    try:
        for line in proc.stdout:  # universal newlines: progress2's \r updates arrive as lines
            if re.match(r"^\s*[\d,.]+[KMG]?\s+\d+%", line):
                if live:
                    sys.stdout.write("\r  " + line.strip()[:100].ljust(100))
                    sys.stdout.flush()
            elif line.strip():
                stats.append(line.strip())
        err = proc.stderr.read()
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()  # rsync keeps what it has (partial files in --partial-dir) for the next run
        proc.wait()
        raise Interrupted("Interrupted. Run the same command again: rsync resumes where it stopped.") from None
    if live:
        sys.stdout.write("\n")
    if code in RSYNC_CONNECTION_CODES:
        raise HostUnreachable(f"rsync lost the host ({RSYNC_CONNECTION_CODES[code]}, exit {code}): {err.strip()[-600:]}\n"
                              "Run the same command again when the host answers: rsync resumes where it stopped.")
    if code != 0:
        raise DeployError(f"rsync exited with code {code}: {err.strip()[-1200:]}")
    counted = lambda what, default: next((int(m.group(1).replace(",", "")) for s in stats  # noqa: E731
                                          if (m := re.match(rf"Number of {what}: ([\d,]+)", s))), default)
    sent = next((s.split(":", 1)[1].strip() for s in stats if s.startswith("Total bytes sent")), "?")
    return {"transferred": counted("regular files transferred", 0), "sent": sent, "deleted": counted("deleted files", None)}


def sync_code(target, inv, say):
    """Mirror the code the host runs into remote.project_dir; stale files inside the code folders are deleted.

    Only trainer/, remote_scripts/, configs/ and the setup files are touched: without
    --delete-excluded, rsync never deletes what the filters exclude, so anything else that
    lives in project_dir (data, runs, a venv, .ssh) stays as it is."""
    conn, project = target.conn, inv.remote["project_dir"]
    filters = ["--filter=P __pycache__/", "--exclude=__pycache__/", "--exclude=*.pyc"]
    filters += [f"--include=/{p}***" if p.endswith("/") else f"--include=/{p}" for p in CODE_PATHS]
    filters += ["--exclude=*", "--delete", "--checksum"]
    answers = conn.answers
    if project not in answers.get("made", ()):  # the invocation's bookkeeping command made it (deploy.host.session)
        conn.run(f"mkdir -p {rq(project)}", hide=True, in_stream=False)
    n, _ = rsync(conn, [*filters, f"{REPO_ROOT}/", rsync_target(conn, project) + "/"])
    settings = {"VENV": inv.remote["venv"], "RUNS_DIR": inv.remote["runs_dir"], "SESSION": inv.tmux_session}
    env = "".join(f"{k}={rq(v)}\n" for k, v in settings.items())  # `~/x` stays relative to whoever sources it
    from trainer.training.environment import code_version  # .code-version stamp or git describe, as the trainer records it (not at start-up)

    version = code_version()
    if answers.pop("code", None) != {"code_version": f"{version}\n", "deploy_env": env}:  # the host has them already: no command
        conn.run(f"cd {rq(project)} && printf '%s\\n' {shlex.quote(version)} > .code-version && printf %s {shlex.quote(env)} > .deploy.env",
                 hide=True, in_stream=False)
    say(f"code {version}: {n} file(s) updated in {project}" if n else f"code {version}: {project} already up to date")
    return n


def local_listing(path):
    """(files, bytes, listing) of a local directory as rsync -a --copy-links leaves it on the host: links
    followed, rsync's partial dir and the upload marker left out; listing: the sha256 of the files' paths, sizes
    and mtimes (seconds), what remote_scripts/fab_session.py's survey computes there (equal totals can hide
    moved or rewritten files)."""
    files = size = 0
    lines = []
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = [d for d in dirs if d != PARTIAL_DIR]
        for name in names:
            if name == UPLOAD_MARKER:  # never sent (rsync --exclude): the host's own
                continue
            file = os.path.join(root, name)
            try:
                st = os.stat(file)
            except OSError as e:
                target = f" (a link to {os.readlink(file)}, which does not exist)" if os.path.islink(file) else ""
                raise LocalInputError(f"Cannot read {file}{target} in local data directory {path}: {e.strerror}. "
                                      "Fix or remove it; nothing was uploaded.") from None
            files, size = files + 1, size + st.st_size
            lines.append(f"{os.path.relpath(file, path)}\0{st.st_size}\0{st.st_mtime_ns // 10**9}\n")
    return files, size, hashlib.sha256("".join(sorted(lines)).encode(errors="surrogateescape")).hexdigest()


def check_local_data(inv):
    """Every configured data dir exists, holds at least one *.npz and no broken link; LocalInputError
    otherwise. Returns {dir: (files, bytes)}."""
    return {d: (files, size) for d, (files, size, _) in local_listings(inv).items()}


def local_listings(inv):
    """check_local_data's checks; {dir: (files, bytes, listing)} (local_listing)."""
    if not inv.local_data:
        raise LocalInputError(f"No data to upload: 'local_data' in {inv.path} lists no directory. "
                              "Add the folders that hold your FaceNet *.npz files.")
    for d in inv.local_data:
        if d.exists() and not d.is_dir():
            raise LocalInputError(f"Local data directory {d} (local_data in {inv.path}) is a file, not a folder of feature files: "
                                  f"list the folder that holds them (e.g. {d.parent}). Nothing was uploaded.")
        if not d.is_dir():
            raise LocalInputError(f"Local data directory {d} (local_data in {inv.path}) does not exist. Nothing was uploaded.")
        if next(d.rglob("*.npz"), None) is None:
            raise LocalInputError(f"Local data directory {d} (local_data in {inv.path}) holds no *.npz files. Nothing was uploaded.")
    return {d: local_listing(d) for d in inv.local_data}


def remote_data_dirs(inv):
    return [rjoin(inv.remote["data_dir"], d.name) for d in inv.local_data]


def sync_data(target, inv, say):
    """Upload each local data dir to remote.data_dir/<name>/ (a mirror), then verify counts and bytes."""
    listed = local_listings(inv)
    local = {d: (files, size) for d, (files, size, _) in listed.items()}
    conn = target.conn
    for d, (files, size) in local.items():
        say(f"{d}: {files} files, {size / 1e6:.1f} MB")
    before = conn.answers.pop("data", None) or {}  # {remote dir: (files, bytes)} from the bookkeeping command (deploy.host.session)
    incomplete = conn.answers.pop("data_incomplete", None) or set()  # the remote dirs that hold UPLOAD_MARKER
    listing = conn.answers.pop("data_listing", None) or {}  # {remote dir: digest of its paths, sizes and mtimes}
    pairs = list(zip(local.items(), remote_data_dirs(inv)))
    changing = [(d, counts, remote) for (d, counts), remote in pairs
                if before.get(remote) != counts or listing.get(remote) != listed[d][2]]
    if changing:  # marked before rsync may change them (an upload cut between two files leaves no partial file)
        conn.run(" && ".join(mark_incomplete(d, counts, remote) for d, counts, remote in changing), hide=True, in_stream=False)
    elif inv.remote["data_dir"] not in conn.answers.get("made", ()):
        conn.run(f"mkdir -p {rq(inv.remote['data_dir'])}", hide=True, in_stream=False)
    total, unchanged = 0, not incomplete and not changing
    for (d, counts), remote in pairs:
        stats = rsync_stats(conn, ["--delete", "--copy-links", f"--partial-dir={PARTIAL_DIR}", f"--exclude={PARTIAL_DIR}/",
                                   f"--exclude={UPLOAD_MARKER}", *inv.rsync_args, f"{d}/", rsync_target(conn, remote) + "/"],
                            show_progress=True)
        n, sent = stats["transferred"], stats["sent"]
        total += n
        unchanged &= n == 0 and stats["deleted"] == 0 and before.get(remote) == counts
        say(f"  -> {remote}: {n} file(s) sent ({sent} bytes on the wire)" if n else f"  -> {remote}: already up to date")
    if unchanged:  # the host held these files and bytes before, and rsync changed nothing: verified without asking again
        say_verified(local, say)
    else:
        verify_data(conn, inv, local, say)
    return total


def mark_incomplete(d, counts, remote):
    """The shell command that puts UPLOAD_MARKER into `remote` (made if missing): what the upload from `d` must bring."""
    marker = json.dumps({"from": str(d), "files": counts[0], "bytes": counts[1], "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())})
    return f"mkdir -p {rq(remote)} && printf '%s\\n' {shlex.quote(marker)} > {rq(rjoin(remote, UPLOAD_MARKER))}"


def say_verified(local, say):
    say(f"verified: the host holds the same files and bytes ({sum(f for f, _ in local.values())} files, "
        f"{sum(s for _, s in local.values()) / 1e6:.1f} MB)")


def data_check_command(remote, files, size):
    """Shell: print "FILES BYTES" of the regular files under `remote` (rsync's partial folder and the upload
    marker left out), and remove its marker when they are `files` and `size` (the laptop's). printf %.0f:
    mawk (Debian's awk) prints a sum over 2**31 as 2.14748e+09."""
    count = (f"find {rq(remote)} -path '*/{PARTIAL_DIR}' -prune -o -type f ! -name {UPLOAD_MARKER} -printf '%s\\n' | "
             """awk '{n++; s+=$1} END {printf "%d %.0f\\n", n, s}'""")
    return f"c=$({count}); echo \"$c\"; if [ \"$c\" = '{files} {size}' ]; then rm -f {rq(rjoin(remote, UPLOAD_MARKER))}; fi"


def verify_data(conn, inv, local, say):
    remotes = remote_data_dirs(inv)
    script = "; ".join(data_check_command(r, files, size) for r, (files, size) in zip(remotes, local.values()))
    out = conn.run(script, hide=True, warn=True, in_stream=False)
    lines = out.stdout.split("\n")
    for (d, (files, size)), remote, line in zip(local.items(), remotes, lines):
        got = tuple(int(v) for v in line.split()) if line.strip() else (0, 0)
        if got != (files, size):
            raise DeployError(f"Upload check failed for {d}: here {files} files / {size} bytes, on the host {remote} "
                              f"{got[0]} files / {got[1]} bytes. Run `fab sync-data` again (rsync resumes).")
    say_verified(local, say)


def check_run_to_resume(path):
    """A fetched run directory that another host can continue: regular files and folders only, config,
    split, normalisation and backup/ (from `fab fetch-results --backup`), not finished, every path in
    its JSON files sound (trainer/results/runfiles.py). LocalInputError naming what is wrong."""
    run = Path(path)
    refuse_special_entries(run, "continue")
    if (run / run_format.CV_PLAN).is_file():
        raise LocalInputError(f"--resume-from {run}: a cross-validation run cannot move to another host yet. Continue it on its "
                              "own host (`fab train --resume` there), or start the cross-validation again here (`fab train --folds K`).")
    if not (run / run_format.CONFIG).is_file():
        raise LocalInputError(f"--resume-from {run}: not a fetched run directory (no config.yaml). "
                              "Expected results/<host>/<run> from `fab fetch-results --backup`.")
    if (run / run_format.METRICS).is_file() and not (run / "backup").is_dir():
        raise LocalInputError(f"--resume-from {run}: that run finished (it has metrics.json); there is nothing to continue.")
    missing = [name for name in (run_format.SPLIT, run_format.MANIFEST, run_format.NORMALIZATION) if not (run / name).is_file()]
    no_backup = not (run / "backup").is_dir() or not any((run / "backup").iterdir())
    if no_backup and epochs_done(run) == 0:
        missing = []  # lost before its first epoch: it starts again under its name (its data prepared again if need be)
    elif no_backup:
        missing.append("backup/")
    if missing:
        raise LocalInputError(f"--resume-from {run} has no {', '.join(missing)}: fetch the run with "
                              "`fab fetch-results --backup` (the backup holds the last finished epoch).")
    try:
        check_run_name(run.name, f"--resume-from {run}")
        check_run_paths(run)
    except UserError as e:
        raise LocalInputError(f"--resume-from {run}: {e}" if str(run) not in str(e) else str(e)) from None
    return run


def epochs_done(run):
    """How many epochs the fetched run finished (status.json's epoch, else history.csv's rows; 0 when neither says)."""
    try:
        epoch = json.loads((run / run_format.STATUS).read_text()).get("epoch")
        if isinstance(epoch, int):
            return epoch
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return max(0, len((run / run_format.HISTORY).read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def refuse_special_entries(run, doing):
    """LocalInputError naming every entry of the local run `run` that is not a regular file or folder."""
    try:
        runfiles.refuse_special_entries(run, doing)
    except UserError as e:
        raise LocalInputError(f"--resume-from {run} (nothing was done on the host): {e}") from None


def upload_run(target, inv, local_run, say):
    """Upload a fetched run directory (with its backup) to remote.runs_dir/<run>/; refuses a name the host has."""
    refuse_special_entries(local_run, "upload")  # again: checked before provisioning, minutes ago
    conn, remote = target.conn, rjoin(inv.remote["runs_dir"], local_run.name)
    if conn.run(f"test -e {rq(rjoin(remote, run_format.CONFIG))}", hide=True, warn=True, in_stream=False).ok:
        raise LocalInputError(f"Run {local_run.name} already exists on the host in {inv.remote['runs_dir']}: continue it there "
                              "with `fab train --resume`, or remove it first.")
    conn.run(f"mkdir -p {rq(inv.remote['runs_dir'])}", hide=True, in_stream=False)
    # launch.json/exit.json belong to the old host's launcher, storage.json/.log/.lock to its uploader: the new ones write their own
    excluded = [f"--exclude=/{name}" for name in (run_format.LAUNCH, run_format.EXIT, run_format.PENDING, run_format.PREEMPT,
                                                  run_format.STORAGE, run_format.STORAGE_LOG, run_format.STORAGE_LOCK)]
    n, sent = rsync(conn, [*RUN_FILES_ONLY, *excluded, f"{local_run}/", rsync_target(conn, remote) + "/"])
    say(f"run {local_run.name}: {n} file(s) ({sent} bytes) uploaded to {remote}")
