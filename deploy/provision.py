"""Provisioning a host: apt packages, GPU report, venv, pinned requirements, TF's GPU view.

    report = provision(conn, inv, say=print)

Idempotent and fast when nothing changed: one SSH command gathers what is there (missing
packages, nvidia-smi, the venv, the requirements marker) and nothing else runs unless
something is missing. The marker `<venv>/.facenet-requirements` holds a hash of the
requirements, pip arguments and the GPU count; it is written only after the install and
the TensorFlow GPU check both succeeded.
"""

import hashlib
import json
import shlex

from deploy.errors import DeployError
from deploy.hosts import rjoin, rq

MARKER = ".facenet-requirements"


def survey(conn, inv):
    """One round trip: {missing: [...], gpus: [...], venv: bool, marker: str, no_dpkg: bool}."""
    venv = inv.remote["venv"]
    packages = " ".join(shlex.quote(p) for p in inv.apt_packages)
    script = f"""
if command -v dpkg-query >/dev/null; then
  for p in {packages}; do
    dpkg-query -W -f='${{Status}}\\n' "$p" 2>/dev/null | grep -q 'ok installed' || echo "missing $p"
  done
else
  echo no-dpkg
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu /'
fi
test -x {rq(rjoin(venv, 'bin/python'))} && echo venv
cat {rq(rjoin(venv, MARKER))} 2>/dev/null | sed 's/^/marker /'
true
"""
    out = conn.run(script, hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"Could not survey the host: {out.stderr.strip() or out.stdout.strip()}")
    found = {"missing": [], "gpus": [], "venv": False, "marker": "", "no_dpkg": False}
    for line in out.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "missing":
            found["missing"].append(rest)
        elif word == "gpu":
            found["gpus"].append(rest.strip())
        elif word == "venv":
            found["venv"] = True
        elif word == "marker":
            found["marker"] = rest.strip()
        elif word == "no-dpkg":
            found["no_dpkg"] = True
    return found


def requirements(inv, gpu_count):
    return inv.pip["gpu"] if gpu_count else inv.pip["cpu"]


def marker_for(inv, gpu_count):
    payload = json.dumps({"requirements": requirements(inv, gpu_count), "extra_args": inv.pip["extra_args"],
                          "gpus": gpu_count, "python": inv.python}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def install_packages(conn, packages, as_root, say):
    sudo = "" if as_root else "sudo -n "
    names = " ".join(shlex.quote(p) for p in packages)
    say(f"Installing apt packages: {' '.join(packages)}")
    cmd = f"{sudo}env DEBIAN_FRONTEND=noninteractive apt-get update -qq && {sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {names}"
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    if out.failed:
        hint = "" if as_root else " (this needs root or passwordless sudo)"
        raise DeployError(f"Installing {' '.join(packages)} failed{hint}: {(out.stderr or out.stdout).strip()[-800:]}\n"
                          f"Install them on the host yourself: sudo apt-get install {' '.join(packages)}")


def provision(conn, inv, say):
    """Bring the host to the state the inventory describes; returns a dict of what it found and did."""
    found = survey(conn, inv)
    gpu_lines = [g for g in found["gpus"] if g.count(",") == 2]
    if found["gpus"] and not gpu_lines:
        say(f"[yellow]nvidia-smi is installed but reports no GPU[/]: {'; '.join(found['gpus'])[:300]}")
    say("GPU: " + ("; ".join(gpu_lines) if gpu_lines else "none (training will run on the CPU)"))
    done = {"gpus": gpu_lines, "installed_packages": [], "venv_created": False, "pip_installed": False}
    if found["no_dpkg"]:
        say(f"[yellow]No dpkg on the host: not checking apt packages; make sure {', '.join(inv.apt_packages)} are installed.[/]")
    elif found["missing"]:
        as_root = conn.run("id -u", hide=True, in_stream=False).stdout.strip() == "0"
        install_packages(conn, found["missing"], as_root, say)
        done["installed_packages"] = found["missing"]
    else:
        say(f"apt packages present: {', '.join(inv.apt_packages)}")

    venv = inv.remote["venv"]
    want = marker_for(inv, len(gpu_lines))
    if found["venv"] and found["marker"] == want:
        say(f"venv {venv} up to date (requirements unchanged)")
        return done
    if not found["venv"]:
        say(f"Creating venv {venv}")
        out = conn.run(f"{shlex.quote(inv.python)} -m venv {rq(venv)}", hide=True, warn=True, in_stream=False)
        if out.failed:
            raise DeployError(f"Creating the venv {venv} with {inv.python} failed: {(out.stderr or out.stdout).strip()[-600:]}\n"
                              "On Ubuntu, python3-venv provides it (it is in apt_packages by default).")
        done["venv_created"] = True
    reqs = requirements(inv, len(gpu_lines))
    say(f"Installing {'GPU' if gpu_lines else 'CPU'} requirements into {venv}: {', '.join(reqs)}")
    pip = rq(rjoin(venv, "bin/python")) + " -m pip install --disable-pip-version-check --progress-bar off"
    args = " ".join(shlex.quote(a) for a in [*inv.pip["extra_args"], *reqs])
    # Shown as it runs: the CUDA build of TensorFlow is gigabytes, and a silent step looks hung.
    out = conn.run(f"{pip} {args}", hide=False, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"pip install failed on the host:\n{(out.stdout + out.stderr).strip()[-1500:]}")
    done["pip_installed"] = True
    check_tensorflow_gpus(conn, venv, len(gpu_lines), say)
    conn.run(f"printf '%s\\n' {want} > {rq(rjoin(venv, MARKER))}", hide=True, in_stream=False)
    return done


def check_tensorflow_gpus(conn, venv, expected, say):
    probe = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    out = conn.run(f"TF_CPP_MIN_LOG_LEVEL=2 {rq(rjoin(venv, 'bin/python'))} -c {shlex.quote(probe)}", hide=True, warn=True, in_stream=False)
    if out.failed:
        raise DeployError(f"TensorFlow does not import in {venv}:\n{out.stderr.strip()[-1200:]}")
    seen = int(out.stdout.strip().splitlines()[-1])
    if seen != expected:
        raise DeployError(
            f"nvidia-smi reports {expected} GPU(s) but TensorFlow sees {seen}. Training would run on the CPU. "
            "Usual causes: the CPU build of TensorFlow is installed (pip.gpu in the inventory should name "
            "tensorflow[and-cuda]), the NVIDIA driver is older than the CUDA that TensorFlow was built for "
            "(check `nvidia-smi` against TensorFlow's tested build configurations), or CUDA_VISIBLE_DEVICES hides them. "
            f"TensorFlow said:\n{out.stderr.strip()[-800:]}"
        )
    say(f"TensorFlow sees {seen} GPU(s), as nvidia-smi does")
