"""The watch as a state machine: what one look at the run means, as a pure function.

    decision = decide(record, look, now, recovery)   # Decision(state, action, reason, exit_code)

`look` is what the watch saw this round: {"reachable": bool, "error": str, "info": run_state.py's
JSON (`fab monitor`'s) or None}. `record` is the watch's record (record.py): the state it was in,
since when the host has not answered, whether the run was seen, how many recoveries it made.
`recovery` is the inventory's `recovery:`.

    seen on the host                 state        action
    trainer ended, exit not recorded ending       wait       (status.json says it, a process of the run lives)
    ended, a process of it lives     ending       wait       (run_state's `training`: whatever the state, the run is
                                                   neither moved nor ended while a process of its launch lives)
    starting, running                following    wait
    stalled                          stalled      wait       (the host agent tells; `fab stop` ends it)
    finished                         finished     end 0
    stopped (`fab stop`, budget cap) stopped      end 3       (the exit record's `requested`)
    stopped, nobody asked (shutdown) lost         recover
    failed (code, data, OOM, disk)   failed       end with the run's own exit code: not restarted
    failed: trainer SIGKILLed (137)  killed       restart in place (`train --resume`) up to
                                                   recovery.max_restarts_on_kill; then (or a kill at
                                                   the epoch of the last one) failed: the likely OOM
    preempted (spot notice)          lost         recover
    vanished (no process, no record) lost         recover
    no run directory (after seen)    lost         recover
    superseded (this launch fenced)  superseded   end 5       (the run moved to another launch: not this watch's)
    host unreachable                 unreachable  wait, then recover after recovery.unreachable_minutes
                                                   without an answer and without a new epoch in storage
                                                   (a run whose stored epochs still arrive is alive)
    lost, max_restarts reached       gave-up      end 10

When the host cannot tell (it does not answer, the run's directory is gone), the watch reads the
run's pointer in storage before moving it (stored_end): a run stored as finished ends 0, failed
(on its own) ends with its own exit code, stopped on request ends 3: none is restarted.

Every state change is a transition the record keeps (record.py), with its reason and time.
"""

from dataclasses import dataclass

from trainer.run_format import run_format

GAVE_UP = 10  # `fab watch`: the run was lost and could not be moved (README.md, exit codes)
STOPPED = run_format.STOPPED  # the watch ends with the run's own code: stopped on request
SUPERSEDED = run_format.SUPERSEDED  # the followed launch was fenced: another launch owns the run now
KILLED = 128 + 9  # the launcher's code for a trainer ended by SIGKILL: the OOM killer, or a person's kill -9
RESTART_TRIES = 5  # a restart after a kill that does not start (the host away meanwhile) is tried this often
TERMINAL = ("finished", "failed", "stopped", "gave-up")


@dataclass(frozen=True)
class Decision:
    state: str
    action: str  # wait, recover, restart (in place: `train --resume`), end
    reason: str
    exit_code: int | None = None


def run_exit_code(info):
    """The failed run's own exit code (its exit record), as a process exit code (1-255)."""
    code = (info.get("exit") or {}).get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


def failure_reason(info):
    record, status = info.get("exit") or {}, info.get("status") or {}
    reason = record.get("reason") or (status.get("error") or {}).get("message")
    return f"exit code {record.get('exit_code')}" + (f": {reason}" if reason else "")


def decide(record, look, now, recovery):
    """The watch's next state and action for `look` (see the module docstring)."""
    if not look["reachable"]:
        return unreachable(record, look, now, recovery)
    info = look["info"]
    state = info["state"]
    if state in ("finished", "failed", "stopped") and not info.get("exit") and info.get("processes"):
        return Decision("ending", "wait", f"{state} on {record['host']}; its launcher is writing the exit record")
    if info.get("training") and state not in run_format.LIVE:  # run_state's answer: a process of the launch lives
        pids = ", ".join(str(p.get("pid")) for p in info.get("processes") or [])
        return Decision("ending", "wait", f"{state} on {record['host']}, but the run's processes ({pids}) still live: "
                                          "neither moved nor ended while they do")
    if state in ("starting", "running"):
        return Decision("following", "wait", f"{state} on {record['host']}")
    if state == "stalled":
        return Decision("stalled", "wait", f"stalled on {record['host']}: its processes live but make no progress (`fab stop` ends it)")
    if state == "finished":
        return Decision("finished", "end", f"finished on {record['host']}", 0)
    if state == "stopped":
        requested = (info.get("exit") or {}).get("requested")
        if not requested:  # a SIGTERM nobody asked for: the host shutting down (a termination, a reboot)
            return lost(record, recovery, f"stopped on {record['host']} without a stop being asked for (a shutdown's SIGTERM?)")
        return Decision("stopped", "end", f"stopped on {record['host']} by {requested.get('by')}: not restarted; "
                                          "`fab train --resume` continues it", STOPPED)
    if state == "failed" and (info.get("exit") or {}).get("exit_code") == KILLED:
        return killed(record, info, recovery)
    if state == "failed":
        return Decision("failed", "end", f"failed on {record['host']} ({failure_reason(info)}): a run that fails on its own "
                                         "is not restarted", run_exit_code(info))
    if state == "superseded":
        return Decision("superseded", "end", f"the launch on {record['host']} was fenced ({failure_reason(info)}): the run continues "
                                             "under another launch, which this watch does not follow", SUPERSEDED)
    if state == "preempted":
        notice = ((info.get("exit") or {}).get("preempted") or {}).get("notice") or {}
        return lost(record, recovery, f"preempted on {record['host']} (spot interruption notice: {notice.get('action')} at {notice.get('time')})")
    if state == "vanished":
        return lost(record, recovery, f"vanished on {record['host']}: no process of the run lives and it left no exit record (reboot, kill)")
    if state == "none" and record.get("seen"):
        return lost(record, recovery, f"the run's directory is gone from {record['host']} ({info.get('error') or 'no run'})")
    return Decision("waiting", "wait", f"run not started on {record['host']} yet ({state})")


def unreachable(record, look, now, recovery):
    """The host does not answer: wait, unless it has not for recovery.unreachable_minutes and no new epoch came to storage."""
    since = record.get("unreachable_since") or now
    alive_at = record.get("stored_progress_at")  # a new epoch of the followed launch arrived in storage then
    waited = now - max(since, alive_at or since)
    limit = recovery["unreachable_minutes"] * 60
    if waited >= limit:
        return lost(record, recovery, f"host {record['host']} unreachable for {(now - since) / 60:.1f} min ({look.get('error')})"
                    + (f"; no new epoch in storage for {waited / 60:.1f} min" if alive_at else ""))
    if alive_at and alive_at > since:
        return Decision("unreachable", "wait", f"host {record['host']} does not answer ({look.get('error')}), but its run goes on: "
                                               f"storage received epoch {record.get('stored_epoch')} {now - alive_at:.0f} s ago. "
                                               "A network problem, not a lost run: waiting")
    return Decision("unreachable", "wait", f"host {record['host']} does not answer ({look.get('error')}); "
                                           f"recovery after {recovery['unreachable_minutes']:g} min without an answer")


def stored_end(pointer, run):
    """The Decision to end the watch when the run's stored pointer says that it ended by itself (finished, failed, or
    stopped on request), else None (running, preempted, vanished, a stop nobody asked for: the run is moved)."""
    state = pointer.get("state")
    summary = pointer.get("summary") if isinstance(pointer.get("summary"), dict) else {}
    record = summary.get("exit") if isinstance(summary.get("exit"), dict) else {}
    where = f"storage says run {run} (epoch {pointer.get('epoch')} on {pointer.get('host') or '?'}, stored {pointer.get('written_at')})"
    if state == "finished":
        return Decision("finished", "end", f"{where} finished: nothing to continue (`fab fetch-results --run {run}`)", 0)
    if state == "failed":
        info = {"exit": record, "status": {"error": summary["error"] if isinstance(summary.get("error"), dict) else None}}
        return Decision("failed", "end", f"{where} failed ({failure_reason(info)}): a run that fails on its own is not restarted; "
                                         f"`fab deploy-full --resume-from {run}` continues it on purpose", run_exit_code(info))
    if state == "stopped" and record.get("requested"):
        by = record["requested"].get("by") if isinstance(record["requested"], dict) else None
        return Decision("stopped", "end", f"{where} stopped on request ({by or 'fab stop'}): not restarted; "
                                          f"`fab deploy-full --resume-from {run}` continues it", STOPPED)
    return None


def resume_in_place(held, stored_epoch):
    """Whether a host that holds the run as its current one, at epoch `held`, continues it itself (`train --resume`):
    not when storage holds a later epoch (the run went on elsewhere since; its older copy there would redo those epochs)."""
    return held is not None and (stored_epoch is None or held >= stored_epoch)


def ended_launch(info):
    """The launch id of the run's end (its exit record's, else its launch.json's), or None."""
    return (info.get("exit") or {}).get("launch_id") or (info.get("launch") or {}).get("launch_id")


def killed(record, info, recovery):
    """A trainer ended by SIGKILL: restarted in place from its last epoch up to recovery.max_restarts_on_kill times; one
    kill is no proof of a repeatable out-of-memory, a second (or one at the epoch of the last) is taken as one. A kill is
    a launch that ended so (the record's `kills`, one per launch): a restart that could not start (the host went away
    meanwhile) is tried again, up to RESTART_TRIES times, and is no second kill."""
    epoch = (info.get("status") or {}).get("epoch") or 0
    launch_id = ended_launch(info)
    kills = record.get("kills") or []
    where = f"on {record['host']}: the trainer was killed by SIGKILL (exit {KILLED}) at epoch {epoch}"
    tried = next((k for k in kills if launch_id and k.get("launch_id") == launch_id), None)
    if tried is not None:  # this kill's restart did not start a new launch
        if tried.get("tries", 1) < RESTART_TRIES:
            return Decision("killed", "restart", f"{where}; its restart did not start (try {tried.get('tries', 1)} of "
                                                 f"{RESTART_TRIES}): trying again")
        return Decision("failed", "end", f"{where}; it could not be restarted in {RESTART_TRIES} tries (see above). Not restarted",
                        KILLED)
    if len(kills) < recovery["max_restarts_on_kill"] and epoch not in [k.get("epoch") for k in kills]:
        return Decision("killed", "restart", f"{where}; restarting it from its last epoch ({len(kills) + 1} of at most "
                                             f"{recovery['max_restarts_on_kill']}: recovery.max_restarts_on_kill)")
    again = f"again (kills at epochs {', '.join(str(k.get('epoch')) for k in kills)})" if kills else "and restarts on kill are off"
    return Decision("failed", "end", f"{where} {again}: most likely the out-of-memory killer (see `dmesg` on the host); lower "
                                     "train.batch_size or data.max_frames, or use a host with more memory. Not restarted",
                    KILLED)


def lost(record, recovery, reason):
    if record.get("restarts", 0) >= recovery["max_restarts"]:
        return Decision("gave-up", "end", f"{reason}; not moved again: recovery.max_restarts ({recovery['max_restarts']}) reached",
                        GAVE_UP)
    return Decision("lost", "recover", reason)
