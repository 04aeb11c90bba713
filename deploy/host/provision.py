"""Provisioning a host: apt packages, GPU report, venv, pinned requirements, TF's GPU view.

    report = provision(conn, inv, say=print)

Idempotent and fast when nothing changed: one survey gathers what is there (missing
packages, nvidia-smi, the venv, the requirements marker), in the invocation's bookkeeping
command (deploy.host.session) or a command of its own, and nothing else runs unless something
is missing. The marker `<venv>/.facenet-requirements` holds the requirements installed (each as a
hash), with the pip arguments' hash, the GPU count and the Python (one line of JSON); it is removed
before pip runs and written only after the install and the TensorFlow GPU check both succeeded. pip
runs when a requirement wanted is not among those installed; one no longer wanted (boto3 once
storage.url is unset) stays, and costs no install.

Two provisions of one venv (two inventories whose runs_dir differ, each with its own host lock) take
turns: the install, the check and the marker are done holding the venv's own lock (an flock on
<venv>/.facenet-provision.lock, held by a command on the host whose end, or the connection's, releases it), and the
second one reads the marker again once it holds it: what the first installed is not installed again.
"""

import hashlib
import json
import re
import shlex
from contextlib import contextmanager

from deploy.errors import DeployError
from deploy.host import bookkeeping
from deploy.host.connection import open_channel
from deploy.host.progress import Progress
from deploy.host.quoting import PYTHON3, rjoin, rq
from deploy.paths import state_dir

MARKER = ".facenet-requirements"  # in the venv: the requirements installed into it (remote_scripts/fab_session.py reads it too)
VENV_LOCK = ".facenet-provision.lock"
VENV_LOCK_WAIT_S = 3600  # the CUDA build of TensorFlow takes minutes to install on a fast network


def marker_path(venv):
    """The marker's path in `venv`, quoted for the host's shell."""
    return rq(rjoin(venv, MARKER))


def survey_request(inv):
    """What provisioning asks the host (remote_scripts/fab_session.py, `provision`)."""
    return {"packages": list(inv.apt_packages), "venv": inv.remote["venv"], "marker": MARKER}


def survey(conn, inv):
    """What is there, in one JSON answer: {uid, dpkg, missing, nvidia_smi: None | {gpus, error}, venv_python, venv_pip,
    marker}. The invocation's bookkeeping command has usually asked already (deploy.host.session): that answer, once;
    else one round trip of its own."""
    found = conn.answers.pop("provision", None) if getattr(conn, "answers", None) else None
    if found is not None:
        return found
    try:
        return bookkeeping.ask(conn, {"provision": survey_request(inv)})["provision"]
    except (DeployError, KeyError, TypeError) as e:
        raise DeployError(f"Could not survey the host (it needs python3, as every Ubuntu has): {e}") from None


def requirements(inv, gpu_count):
    """What the venv needs: pip.gpu or pip.cpu, and pip.storage (boto3, for the uploader) where storage.url is set."""
    storage = inv.pip.get("storage", []) if (getattr(inv, "storage", None) or {}).get("url") else []
    return (inv.pip["gpu"] if gpu_count else inv.pip["cpu"]) + storage


def marker_for(inv, gpu_count):
    """The marker's text for an install of what `inv` wants: one line of JSON, each requirement and the pip arguments
    as a hash (an index URL or a requirement's URL may hold a token)."""
    digest = lambda value: hashlib.sha256(json.dumps(value).encode()).hexdigest()[:32]  # noqa: E731
    return json.dumps({"requirements": sorted(map(digest, requirements(inv, gpu_count))), "extra_args": digest(inv.pip["extra_args"]),
                       "gpus": gpu_count, "python": inv.python}, sort_keys=True)


def covers(marker, want):
    """Whether the venv's marker covers the marker `want`: the same pip arguments, GPU count and Python, and every
    requirement wanted among those installed. False for no marker or an earlier version's (a hash)."""
    try:
        have = json.loads(marker)
    except ValueError:
        return False
    wanted = json.loads(want)
    return (isinstance(have, dict) and all(have.get(key) == wanted[key] for key in ("extra_args", "gpus", "python"))
            and set(wanted["requirements"]) <= set(have.get("requirements") or []))


APT_LOCK_WAIT_S = 600  # a fresh Ubuntu runs unattended-upgrades at boot, holding dpkg's lock for minutes


def install_packages(conn, packages, as_root, say):
    sudo = "" if as_root else "sudo -n "
    names = " ".join(shlex.quote(p) for p in packages)
    say(f"Installing apt packages: {' '.join(packages)} (waits up to {APT_LOCK_WAIT_S} s for another apt to finish)")
    apt = f"{sudo}env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"
    cmd = f"{apt} update -qq && {apt} install -y -qq {names}"
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    if out.failed:
        hint = "" if as_root else " (this needs root or passwordless sudo)"
        raise DeployError(f"Installing {' '.join(packages)} failed{hint}: {(out.stderr or out.stdout).strip()[-800:]}\n"
                          f"Install them on the host yourself: sudo apt-get install {' '.join(packages)}")


def gpu_report(found, inv, say):
    """The GPUs nvidia-smi lists; a broken nvidia-smi fails unless the inventory allows CPU training."""
    smi = found["nvidia_smi"]
    if smi is None:
        say("GPU: none (no nvidia-smi; training will run on the CPU)")
        return []
    if smi["error"]:
        if not inv.allow_cpu_training:
            raise DeployError(f"nvidia-smi is installed but fails: {smi['error']}\nThis host should have a GPU, and training would "
                              "silently run on the CPU. Fix the NVIDIA driver (a reboot after a kernel update often helps), or set "
                              f"allow_cpu_training: true in {inv.path} if CPU training is intended.")
        say(f"warning: nvidia-smi fails ({smi['error'][:300]}); training on the CPU (allow_cpu_training is true)", "yellow")
        return []
    say("GPU: " + "; ".join(smi["gpus"]))
    return smi["gpus"]


def provision(conn, inv, say):
    """Bring the host to the state the inventory describes; returns a dict of what it found and did."""
    found = survey(conn, inv)
    gpu_lines = gpu_report(found, inv, say)
    done = {"gpus": gpu_lines, "installed_packages": [], "venv_created": False, "pip_repaired": False, "pip_installed": False}
    if not found["dpkg"]:
        say(f"warning: no dpkg on the host: not checking apt packages; make sure {', '.join(inv.apt_packages)} are installed.", "yellow")
    elif found["missing"]:
        install_packages(conn, found["missing"], found["uid"] == 0, say)
        done["installed_packages"] = found["missing"]
    else:
        say(f"apt packages present: {', '.join(inv.apt_packages)}")

    venv = inv.remote["venv"]
    python = rq(rjoin(venv, "bin/python"))
    want = marker_for(inv, len(gpu_lines))
    if found["venv_python"] and found["venv_pip"] and covers(found["marker"], want):
        say(f"venv {venv} up to date (requirements unchanged)")
        return done
    if not found["venv_python"]:
        say(f"Creating venv {venv}")
        out = conn.run(f"{shlex.quote(inv.python)} -m venv {rq(venv)}", hide=True, warn=True, in_stream=False)
        if out.failed:
            raise DeployError(f"Creating the venv {venv} with {inv.python} failed: {(out.stderr or out.stdout).strip()[-600:]}\n"
                              "On Ubuntu, python3-venv provides it (it is in apt_packages by default).")
        done["venv_created"] = True
    elif not found["venv_pip"]:  # e.g. left by a `python3 -m venv` that failed for want of python3-venv
        say(f"The venv {venv} has no pip: repairing it (ensurepip)", "yellow")
        out = conn.run(f"{python} -m ensurepip --upgrade", hide=True, warn=True, in_stream=False)
        if out.failed:
            raise DeployError(f"The venv {venv} has no pip and ensurepip failed: {(out.stderr or out.stdout).strip()[-600:]}\n"
                              f"Remove it on the host (rm -r {venv}) and run `fab provision` again.")
        done["pip_repaired"] = True
    with venv_held(conn, venv, say):
        marker = conn.run(f"cat {marker_path(venv)} 2>/dev/null", hide=True, warn=True, in_stream=False).stdout
        if covers(marker, want):  # another provision of this venv installed them while this one waited
            say(f"venv {venv} up to date (another provision of it installed the requirements meanwhile)")
            return done
        install_requirements(conn, inv, python, len(gpu_lines), say)
        done["pip_installed"] = True
        check_tensorflow_gpus(conn, inv, len(gpu_lines), say)
        conn.run(f"printf '%s\\n' {shlex.quote(want)} > {marker_path(venv)}", hide=True, in_stream=False)
    return done


# The holder of a venv's lock on the host (its system python3, as the bookkeeping helper: no `flock` needed): "waiting"
# while another holds it, "held" once it does; it keeps it until its input ends.
VENV_LOCKER = """import fcntl, sys, time
path, wait = sys.argv[1], float(sys.argv[2])
try:
    f = open(path, "a")
except OSError as e:
    sys.exit(f"cannot open {path}: {e}")
deadline, said = time.monotonic() + wait, False
while True:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        if time.monotonic() > deadline:
            sys.exit(f"another provision of this venv held {path} for over {wait:.0f} s")
        if not said:
            print("waiting", flush=True)
            said = True
        time.sleep(1)
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def venv_held(conn, venv, say):
    """The venv's lock, held on the host while the block runs: VENV_LOCKER keeps an flock on <venv>/VENV_LOCK until its
    input ends, when the block ends, or the connection does. Waits up to VENV_LOCK_WAIT_S for another holder, saying
    so; DeployError naming the lock when it cannot take it."""
    lock = rjoin(venv, VENV_LOCK)
    channel = open_channel(conn, f"exec {PYTHON3} -c {shlex.quote(VENV_LOCKER)} {rq(lock)} {VENV_LOCK_WAIT_S}")
    try:
        for line in channel.makefile("r"):  # up to "held"; its end: the lock was not taken
            if line.strip() == "waiting":
                say(f"Waiting for another provision of the venv {venv} to finish (up to {VENV_LOCK_WAIT_S} s)", "yellow")
            elif line.strip() == "held":
                break
        else:
            conn.check_alive()
            error = channel.makefile_stderr("rb").read().decode("utf-8", "replace").strip()[-600:]
            raise DeployError(f"Could not take the lock of the venv {venv} ({lock}){': ' + error if error else ''}")
        yield
    finally:
        channel.close()  # its holder's input ends: the lock is released


def install_requirements(conn, inv, python, gpu_count, say):
    """pip install the requirements into the venv, its marker removed first: an install that fails partway may have
    changed the venv, and no marker then covers it."""
    venv, kind = inv.remote["venv"], "GPU" if gpu_count else "CPU"
    reqs = requirements(inv, gpu_count)
    say(f"Installing {kind} requirements into {venv}: {', '.join(reqs)}")
    pip = f"{python} -m pip install --disable-pip-version-check --progress-bar off"
    args = " ".join(shlex.quote(a) for a in [*inv.pip["extra_args"], *reqs])
    # One line with the elapsed time and what pip is at (the CUDA build of TensorFlow is gigabytes: a silent step looks
    # hung); its full output goes to a log file here (FACENET_VERBOSE=1, or --verbose, shows it as it comes).
    log = state_dir() / "logs" / f"pip-{re.sub(r'[^A-Za-z0-9_.-]', '_', str(getattr(conn, 'label', None) or conn.host))}.log"
    with Progress(f"installing {kind} requirements", log, say) as progress:
        out = conn.run(f"rm -f {marker_path(venv)}; {pip} {args}", hide=False, warn=True, in_stream=False,
                       out_stream=progress, err_stream=progress)
    if out.failed:
        raise DeployError(f"pip install failed on the host (exit {out.exited}); its last lines:\n{progress.tail()}\n"
                          f"Its full output: {log}")
    say(f"requirements installed in {progress.elapsed():.0f} s (pip's output: {log})")


GPU_PROBE = ("import json, sys, tensorflow as tf; "
             "json.dump({'gpus': len(tf.config.list_physical_devices('GPU'))}, open(sys.argv[1], 'w'))")


def check_tensorflow_gpus(conn, inv, expected, say):
    """TensorFlow in the venv sees as many GPUs as nvidia-smi; its answer comes back as a JSON file."""
    venv = inv.remote["venv"]
    out, result = run_with_result(conn, inv, "gpu-probe",
                                  f"{rq(rjoin(venv, 'bin/python'))} -c {shlex.quote(GPU_PROBE)}")
    if result is None:
        raise DeployError(f"TensorFlow does not import in {venv} (exit {out.exited}):\n{out.stderr.strip()[-1200:]}")
    seen = result["gpus"]
    if seen != expected:
        raise DeployError(
            f"nvidia-smi reports {expected} GPU(s) but TensorFlow sees {seen}. Training would run on the CPU. "
            "Usual causes: the CPU build of TensorFlow is installed (pip.gpu in the inventory should name "
            "tensorflow[and-cuda]), the NVIDIA driver is older than the CUDA that TensorFlow was built for "
            "(check `nvidia-smi` against TensorFlow's tested build configurations), or CUDA_VISIBLE_DEVICES hides them. "
            f"TensorFlow said:\n{out.stderr.strip()[-800:]}"
        )
    say(f"TensorFlow sees {seen} GPU(s), as nvidia-smi does")


def result_path(remote, name):
    """Where the remote step `name` leaves its JSON result on the host (until the step runs again)."""
    return rjoin(remote["runs_dir"], ".results", f"{name}.json")


def run_with_result(conn, inv, name, command):
    """Run `command RESULT_FILE` on the host; returns (the run's Result, the JSON it wrote or None).

    Remote steps report through this file, never through their output: TensorFlow writes
    different lines to stderr on different machines."""
    path = result_path(inv.remote, name)
    folder = rjoin(inv.remote["runs_dir"], ".results")
    out = conn.run(f"mkdir -p {rq(folder)} && rm -f {rq(path)} && {command} {rq(path)}", hide=True, warn=True, in_stream=False)
    got = conn.run(f"cat {rq(path)}", hide=True, warn=True, in_stream=False)
    try:
        return out, json.loads(got.stdout) if got.ok else None
    except ValueError:
        return out, None
