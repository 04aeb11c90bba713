#!/usr/bin/env python3
"""A `fab` invocation's bookkeeping on the host, in one remote command (deploy/host/bookkeeping.py sends it).

    python3 fab_session.py REQUEST_JSON    # one JSON line; while it holds the host lock it stays for `beat` and `release`

Standard library only. The deploy side sends this file's text as `python3 -c TEXT REQUEST_JSON`, so
it runs before the code is synced. REQUEST_JSON holds any of (each answered under the same key):

    heartbeat   a file touched now and at every beat (the host agent's autostop counts it); not answered
    lock        {dir, holder}: mkdir DIR (atomic: one holder), DIR/holder.json, DIR/lease; answers {acquired: true}
                or the holder's record ({} while it has none). A lock refused: nothing else is done.
    dirs        folders to create (mkdir -p); answers those that exist now
    training    {scripts, runs_dir, session, stall_seconds}: the host's own run_state.collect (quick), with its
                exit_code; null where run_state.py is not synced yet; {error} if it fails
    provision   {packages, venv, marker}: {uid, dpkg, missing, nvidia_smi: null | {gpus, error}, venv_python,
                venv_pip (pip's package is in the venv), marker}
    data        folders: [files, bytes] of each (regular files; rsync's partial folders not counted), and
                "incomplete": whether each holds the marker of an unverified upload
    code        the project folder: {code_version, deploy_env}, the text of its .code-version and .deploy.env ("" if missing)

While it holds the lock it reads its standard input, a word a line, and answers each with a JSON
line: `beat` touches the heartbeat and the lock's lease (only while holder.json is still this
holder's: `fab unlock` may have removed it); `release` removes the lock (only this holder's) and
ends. The end of its input without `release` (the laptop died, the connection dropped, a third
Ctrl-C) leaves the lock as a task that died leaves it: its lease goes stale, `fab unlock` removes it.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

# Copies of run_format's (this file runs as `python3 -c` and imports nothing beside it); tests/unit/test_run_format.py
# holds them equal.
PARTIAL_DIR = ".rsync-partial"  # run_format.UPLOAD_PARTIAL_DIR: rsync's resumable partial files, not part of the data
UPLOAD_MARKER = ".facenet-upload-incomplete"  # run_format.UPLOAD_MARKER: in a data folder while an upload into it is unverified
LOCK_HOLDER, LOCK_LEASE = "holder.json", "lease"  # run_format's: the host lock's holder record and its lease


def home(path):
    """`~` and `~/...` as the remote shell reads them (deploy.host.quoting.rq); other paths as they are."""
    return os.path.expanduser(path) if path == "~" or path.startswith("~/") else path


def touch(path):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            os.utime(path)
        return True
    except OSError:
        return False


def take_lock(request):
    """{acquired: true}, or the holder's record (what holds the lock), or {error} when the lock cannot be made."""
    path, holder = home(request["dir"]), request["holder"]
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)
    except FileExistsError:
        try:
            with open(os.path.join(path, LOCK_HOLDER)) as f:
                record = json.load(f)
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        with open(os.path.join(path, LOCK_HOLDER), "w") as f:
            json.dump(holder, f)
        touch(os.path.join(path, LOCK_LEASE))
    except OSError as e:  # e.g. a full disk: the lock is not usable, take nothing
        shutil.rmtree(path, ignore_errors=True)
        return {"error": f"{type(e).__name__}: {e}"}
    return {"acquired": True}


def ours(lock):
    """The lock is still this holder's (its token in holder.json)."""
    try:
        with open(os.path.join(home(lock["dir"]), LOCK_HOLDER)) as f:
            return json.load(f).get("token") == lock["holder"]["token"]
    except (OSError, ValueError, AttributeError):
        return False


def make_dirs(paths):
    made = []
    for path in paths:
        try:
            os.makedirs(home(path), exist_ok=True)
            made.append(path)
        except OSError:
            pass  # the step that needs it makes it itself, and says why it cannot
    return made


def training(request):
    """The host's own run_state (quick: no GPUs, no agent), or None before the code is synced."""
    scripts = home(request["scripts"])
    if not os.path.isfile(os.path.join(scripts, "run_state.py")):
        return None
    try:
        sys.path.insert(0, scripts)
        import run_state

        info = run_state.collect(request["runs_dir"], request["session"], None, 0, stall_seconds=request.get("stall_seconds"),
                                 quick=True)
        info["exit_code"] = run_state.EXIT_CODES[info["state"]]
        return info
    except Exception as e:  # noqa: BLE001 - any failure is the deploy side's to report, with its text
        return {"error": f"{type(e).__name__}: {e}"}


def run(*cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr
    except (OSError, subprocess.SubprocessError) as e:
        return -1, "", str(e)


def provision(request):
    """What provisioning needs to know (deploy/host/provision.py): missing apt packages, GPUs, the venv, its marker."""
    venv = home(request["venv"])
    found = {"uid": os.getuid(), "dpkg": bool(shutil.which("dpkg-query")), "missing": [], "nvidia_smi": None,
             "venv_python": os.access(os.path.join(venv, "bin", "python"), os.X_OK), "venv_pip": False, "marker": ""}
    if found["dpkg"]:
        for package in request["packages"]:
            code, out, _ = run("dpkg-query", "-W", "-f=${Status}", package)
            if code != 0 or "ok installed" not in out:
                found["missing"].append(package)
    if shutil.which("nvidia-smi"):
        code, out, err = run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
        rows = [line.strip() for line in out.splitlines() if line.strip()]
        ok = code == 0 and rows and all(line.count(",") == 2 for line in rows)
        found["nvidia_smi"] = {"gpus": rows if ok else [], "error": None if ok else (err.strip() or out.strip() or f"exit {code}")[-600:]}
    if found["venv_python"]:  # pip's package in the venv (not `pip --version`: seconds, for a file's presence)
        found["venv_pip"] = any(os.path.isfile(os.path.join(lib, "pip", "__init__.py"))
                                for lib in glob.glob(os.path.join(glob.escape(venv), "lib*", "python3*", "site-packages")))
    try:
        with open(os.path.join(venv, request["marker"])) as f:
            found["marker"] = f.read().strip()
    except OSError:
        pass
    return found


def tree(path):
    """[files, bytes, listing] of the regular files under `path`, counted as deploy/host/sync.py's verification
    counts them (`find -path '*/.rsync-partial' -prune -o -type f ! -name .facenet-upload-incomplete`); listing:
    the sha256 of their paths, sizes and mtimes, as sync.py's `local_listing` makes it of the laptop's folder.
    [0, 0, digest of nothing] for a folder that is not there."""
    files = size = 0
    top, lines = home(path), []
    for root, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if d != PARTIAL_DIR]
        for name in names:
            if name in (PARTIAL_DIR, UPLOAD_MARKER):
                continue
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_mode & 0o170000 == 0o100000:  # S_ISREG: not a link, not a device
                files, size = files + 1, size + st.st_size
                lines.append(f"{os.path.relpath(os.path.join(root, name), top)}\0{st.st_size}\0{st.st_mtime_ns // 10**9}\n")
    return [files, size, hashlib.sha256("".join(sorted(lines)).encode(errors="surrogateescape")).hexdigest()]


def code(project):
    found = {}
    for key, name in (("code_version", ".code-version"), ("deploy_env", ".deploy.env")):
        try:
            with open(os.path.join(home(project), name)) as f:
                found[key] = f.read()
        except OSError:
            found[key] = ""
    return found


def answer(request):
    if request.get("heartbeat"):
        touch(home(request["heartbeat"]))
    found = {}
    if request.get("lock"):
        found["lock"] = take_lock(request["lock"])
        if not found["lock"].get("acquired"):
            return found
    if request.get("dirs"):
        found["dirs"] = make_dirs(request["dirs"])
    if request.get("training"):
        found["training"] = training(request["training"])
    if request.get("provision"):
        found["provision"] = provision(request["provision"])
    if request.get("data"):
        trees = [tree(path) for path in request["data"]]
        found["data"] = [t[:2] for t in trees]
        found["listing"] = [t[2] for t in trees]
        found["incomplete"] = [os.path.lexists(os.path.join(home(path), UPLOAD_MARKER)) for path in request["data"]]
    if request.get("code"):
        found["code"] = code(request["code"])
    return found


def hold(request):
    """Beats and the release, from the deploy side, until `release` or the end of the input."""
    lock = request["lock"]
    for line in sys.stdin:
        word = line.strip()
        if word == "beat":
            touched = touch(home(request["heartbeat"])) if request.get("heartbeat") else False
            held = ours(lock)
            if held:
                touch(os.path.join(home(lock["dir"]), LOCK_LEASE))
            reply = {"beat": touched, "held": held}
        elif word == "release":
            held = ours(lock)
            if held:
                shutil.rmtree(home(lock["dir"]), ignore_errors=True)
            print(json.dumps({"released": held}), flush=True)
            return
        else:
            reply = {"error": f"unknown request {word[:40]!r}: expected beat or release"}
        print(json.dumps(reply), flush=True)


def main(argv):
    request = json.loads(argv[0])
    found = answer(request)
    print(json.dumps(found), flush=True)
    if (found.get("lock") or {}).get("acquired"):
        hold(request)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
