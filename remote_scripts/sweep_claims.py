"""A sweep runner's look at its runs' claims in run storage (remote_scripts/sweep_queue.py; trainer/storage/claims.py).

    how, detail = claim_of(queue, run)     # ("mine", claim) | ("moved", claim) | ("unknown", why)
    allowed = may_start(queue, state, run) # True; False: moved (runner.json's moved, ended); None: unknown (its waiting)
    stand_down_if_moved(queue, run, info)  # a launch of this host whose run was claimed by another host: fenced

With run storage (queue.json's env holds FACENET_STORAGE), a queued run is started (new or resumed) only when its claim
names this host (queue.json's "host"). The laptop rewrites the claim before it moves a run to another host, so a host
that stopped answering but lives on never starts a run moved off it; a run it trains when the claim moves is fenced
(its trainer stops at its next epoch end, exit SUPERSEDED). A claim that cannot be read (storage unreachable, no
claim yet) is never taken as this host's: the runner waits and asks again. Without run storage every run is this
host's (the laptop then never moves the run of a host that does not answer). Standard library only: the claim is read by
the host venv's Python (`python -m trainer.storage.claims claim-of RUN`), with the storage settings the launches get.
"""

import json
import os
import subprocess
import time

import run_state

CLAIM_POLL_SECONDS = float(os.environ.get("FACENET_SWEEP_CLAIM_POLL", "15"))
ASKED = {}  # run -> monotonic time of the last look while it trains (stand_down_if_moved)


def storage_settings(queue):
    text = (queue.get("env") or {}).get("FACENET_STORAGE")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def this_host(queue):
    return queue.get("host") or (storage_settings(queue) or {}).get("host")


def claim_of(queue, run):
    """("mine", claim) when the run's claim names this host (or there is no run storage: claim None); ("moved", claim)
    when it names another; ("unknown", why) when storage cannot say (unreachable, no claim, an unreadable one)."""
    if storage_settings(queue) is None:
        return "mine", None
    venv, project = (os.path.expanduser(w) for w in queue["launcher"][2:4])
    words = [os.path.join(venv, "bin", "python"), "-m", "trainer.storage.claims", "claim-of", run]
    try:
        out = subprocess.run(words, cwd=project, env={**os.environ, **queue["env"]}, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "unknown", f"reading the claim of {run} failed: {type(e).__name__}: {e}"
    try:
        answer = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "unknown", f"claim-of {run} gave no answer (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-300:]}"
    if not isinstance(answer, dict) or answer.get("error") or not isinstance(answer.get("claim"), (dict, type(None))):
        return "unknown", f"the claim of {run} cannot be read: {answer.get('error') if isinstance(answer, dict) else answer}"
    claim = answer["claim"]
    if claim is None:
        return "unknown", f"run storage holds no claim of {run} (`fab sweep NAME` writes it when it queues the run)"
    return ("mine" if claim.get("host") == this_host(queue) else "moved"), claim


def may_start(queue, state, run):
    """True when this host may start `run` (its claim names it, or no run storage); False when another host holds it
    (recorded in the runner's state: moved {run: {to, at}}, ended superseded); None when storage cannot say (the
    state's `waiting` says why: the runner asks again later)."""
    how, detail = claim_of(queue, run)
    state["waiting"] = detail if how == "unknown" else None
    if how == "unknown":
        return None
    if how == "moved":
        state.setdefault("moved", {})[run] = {"to": detail.get("host"), "at": detail.get("written_at")}
        state["ended"][run] = "superseded"
        return False
    (state.get("moved") or {}).pop(run, None)
    return True


def stand_down_if_moved(queue, run, info):
    """While a launch of `run` trains here: every CLAIM_POLL_SECONDS, its claim asked; when another host holds it (the
    laptop moved the run while this host did not answer), the launch is fenced. Returns the claim's host then, else None."""
    launch_id = (info.get("launch") or {}).get("launch_id")
    if storage_settings(queue) is None or not launch_id or not info.get("run_dir"):
        return None
    if time.monotonic() - ASKED.get(run, float("-inf")) < CLAIM_POLL_SECONDS:
        return None
    ASKED[run] = time.monotonic()
    how, claim = claim_of(queue, run)
    if how != "moved" or run_state.fenced(info["run_dir"], launch_id):
        return None
    run_state.fence(info["run_dir"], launch_id, f"the sweep moved {run} to {claim.get('host')} ({claim.get('why')})")
    return claim.get("host")
