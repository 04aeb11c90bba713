"""What the host agent tells the user (notify.py), and when it says the host powers off. Called by host_agent.py;
standard library only.

    notify_run(runs_dir, settings, running, stalled)      # every round: started, stalled, finished, failed, preempted
    notify_host(runs_dir, settings, key, event, text)     # autostop fired, the budget cap's warning and firing
    poweroff_plan(runs_dir, settings, state, view)        # when and why the host powers off, in a sentence
    python3 agent_events.py fetched RUNS_DIR RUN STATE ENDED_AT   # `fab fetch-results` brought the run home
                                                          # (autostop_guard.record_fetch: autostop's guard is there)

Run events are recorded in the run's own notifications.json (notify.py), host events in the agent's
(RUNS_DIR/.agent/notifications.json). Only events after the webhook was set are sent
(settings' notify_since), so setting one does not announce the end of an old run.
"""

import os
import sys
import time

import host_files
import notify
import run_format
import storage_state
from autostop_guard import autostop_hold, record_fetch
from host_files import agent_dir, current, log
from run_records import fenced
from run_state import derive_state

RECORD = "notifications.json"


def host_label(settings):
    return settings.get("host_label")


def notify_host(runs_dir, settings, key, event, text, **details):
    url = settings.get("notify_webhook")
    if not url:
        return None
    return notify.send_once(url, os.path.join(agent_dir(runs_dir), RECORD), key, event, text, by="agent",
                            log=lambda m: log(runs_dir, m), host=host_label(settings), **details)


def notify_event(runs_dir, settings, run, run_dir, key, event, text, **details):
    url = settings.get("notify_webhook")
    if not url:
        return None
    return notify.send_once(url, os.path.join(run_dir, RECORD), key, event, text, by="agent", log=lambda m: log(runs_dir, m),
                            run=run, host=host_label(settings), **details)


def where(settings, run):
    host = host_label(settings)
    return f"run {run}" + (f" on {host}" if host else "")


def finished_text(metrics, status):
    """'test UAR 0.612 [0.571, 0.650], cost $1.23 (1.2 h)' from metrics.json, as far as it says."""
    parts = []
    try:
        split = metrics.get("headline") or ("test" if metrics.get("test") else "validation")
        m = metrics.get(split) or {}
        ci = (m.get("ci95") or {}).get("uar")
        parts.append(f"{split} UAR {m['uar']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        pass
    compute = (metrics or {}).get("compute") or {}
    if isinstance(compute.get("cost_usd"), (int, float)):
        parts.append(f"cost ${compute['cost_usd']:.2f} ({compute.get('hours', 0):.2f} h)")
    elif isinstance(compute.get("hours"), (int, float)):
        parts.append(f"{compute['hours']:.2f} compute hours (no price set)")
    if isinstance((status or {}).get("epoch"), int):
        parts.append(f"{status['epoch']} epochs")
    return ", ".join(parts)


def notify_run(runs_dir, settings, running, stalled, autostop=None, state=None):
    """The current run's events, each once: started (its first launch), stalled, and its end
    (finished, failed with the reason, preempted). A stop on request is the user's own act: not sent.
    Never raises: a notification must not cost the agent its round."""
    if not settings.get("notify_webhook"):
        return
    try:
        _notify_run(runs_dir, settings, running, stalled, autostop, state or {})
    except Exception as e:  # noqa: BLE001 - e.g. a run file edited by hand
        log(runs_dir, f"notify: skipped a round ({type(e).__name__}: {e})")


def _notify_run(runs_dir, settings, running, stalled, autostop, agent_state):
    found = current(runs_dir)
    if found is None:
        return
    run, run_dir = found
    launch = host_files.read_launch(run_dir)
    launch_id = launch.get("launch_id") or "legacy"
    if fenced(run_dir, launch_id):  # the run continues under another launch: its events are that one's
        return
    status = host_files.read_json(os.path.join(run_dir, run_format.STATUS))
    status = status if isinstance(status, dict) else {}
    if (status.get("distribution") or {}).get("chief") is False:  # a cluster's other workers: the chief's agent tells
        return
    since = settings.get("notify_since") or 0
    record = host_files.exit_record(run_dir, launch)
    if running and not record:
        fresh = not status.get("resumed_at") and not status.get("epoch")  # a resumed run has epochs already
        if fresh and host_files.mtime(os.path.join(run_dir, run_format.LAUNCH)) >= since:
            notify_event(runs_dir, settings, run, run_dir, f"started:{run}", "started",
                         f"started: {where(settings, run)} ({status.get('epochs') or '?'} epochs planned)", launch_id=launch_id)
        if stalled:
            notify_event(runs_dir, settings, run, run_dir, f"stalled:{launch_id}", "stalled",
                         f"stalled: {where(settings, run)} counts as stalled since {notify.iso(stalled)}: its processes live, its "
                         "status.json is not rewritten (`fab monitor` says more; `fab stop` ends it)", launch_id=launch_id, epoch=status.get("epoch"))
        return
    if not record or host_files.mtime(host_files.exit_path(run_dir, launch) or run_dir) < since:
        return
    state = derive_state(record, False, status)
    if state == "finished":
        metrics = host_files.read_json(os.path.join(run_dir, run_format.METRICS)) or {}
        summary = finished_text(metrics, status)
        notify_event(runs_dir, settings, run, run_dir, f"finished:{run}", "finished",
                     f"finished: {where(settings, run)}" + (f": {summary}" if summary else "")
                     + f"; {poweroff_plan(runs_dir, settings, agent_state, autostop or {})['text']}",
                     metrics={k: metrics.get(k) for k in ("headline", "test", "compute") if k in metrics} or None)
    elif state == "failed":
        reason = record.get("reason") or (status.get("error") or {}).get("message") or f"exit code {record.get('exit_code')}"
        if record.get("exit_code") == 128 + 9:  # a kill: a `fab watch` following the run restarts it (recovery.max_restarts_on_kill)
            reason += "; a `fab watch` following the run may restart it (recovery.max_restarts_on_kill) and says so (`recovered`)"
        notify_event(runs_dir, settings, run, run_dir, f"failed:{launch_id}", "failed",
                     f"failed: {where(settings, run)} (exit {record.get('exit_code')}): {reason}", launch_id=launch_id,
                     exit_code=record.get("exit_code"), reason=reason, epoch=status.get("epoch"))
    elif state == "preempted":
        notify_preempted(runs_dir, settings, run, run_dir, launch_id, (record.get("preempted") or {}).get("notice") or {}, status)


def clock(at, now):
    """'03:42 UTC', or 'Mon 03:42 UTC' when it is not today (UTC)."""
    same_day = time.gmtime(at)[:3] == time.gmtime(now)[:3]
    return time.strftime("%H:%M UTC" if same_day else "%a %H:%M UTC", time.gmtime(at))


def poweroff_plan(runs_dir, settings, state, view, now=None):
    """When and why the host powers off, in a sentence: autostop (its short wait once the run's end is safe) or the
    budget cap, whichever comes first. The agent keeps it in state.json (`poweroff`) every round; the `finished`
    notification and `fab watch` say it."""
    now = time.time() if now is None else now
    auto, plans, notes = settings.get("autostop") or {}, [], []
    budget = settings.get("budget") or {}
    if isinstance(budget.get("deadline"), (int, float)) and not (state.get("budget") or {}).get("fired_at"):
        plans.append((budget["deadline"], f"budget cap, {budget.get('max_hours')} h after launch"))
    held = autostop_hold(runs_dir, settings, state) if view.get("armed") and not view.get("waiting_for_training") else None
    short = auto.get("done_seconds") if auto.get("done_seconds") and auto.get("done_seconds") < auto.get("idle_seconds", 0) else None
    if held:
        notes.append("autostop waits until the run is fetched or stored: a poweroff deletes this host")
    elif view.get("armed") and view.get("fires_at_epoch"):
        at, why = view["fires_at_epoch"], view.get("why") or "autostop"
        found = current(runs_dir) if short and not state.get("done") else None
        record = storage_state.read(found[1]) or {} if found else {}
        launch = host_files.read_launch(found[1]) if found else {}
        if found and record.get("launch_id") == launch.get("launch_id") and not record.get("done") and at > now + short:
            at, why = now + short, f"about {short / 60:.3g} idle minutes after its end is stored"
        elif found:
            notes.append(f"a fetch brings it to {short / 60:.3g} idle minutes after")
        plans.append((at, f"autostop: {why}, if still idle"))
    if not plans:
        return {"at": None, "text": "; ".join(notes) or "the host stays up: autostop is off (`fab down` or `fab autostop` stops the billing)"}
    at, why = min(plans)
    return {"at": at, "text": f"the host powers off at {clock(at, now)} ({'; '.join([why, *notes])})"}


def notify_preempted(runs_dir, settings, run, run_dir, launch_id, notice, status=None):
    """The spot notice (sent when it arrives, before the stop: its two minutes run)."""
    if not settings.get("notify_webhook"):
        return
    epoch = (status or {}).get("epoch")
    notify_event(runs_dir, settings, run, run_dir, f"preempted:{launch_id}", "preempted",
                 f"preempted: {where(settings, run)}: spot interruption notice ({notice.get('action')} at {notice.get('time')})"
                 + (f"; epoch {epoch} was the last finished" if epoch is not None else "")
                 + "; `fab watch` continues it elsewhere from storage", launch_id=launch_id, notice=notice, epoch=epoch)


def main(argv):
    """python3 agent_events.py fetched RUNS_DIR RUN STATE ENDED_AT   (`fab fetch-results`, after its rsync)"""
    if len(argv) == 5 and argv[0] == "fetched" and run_format.RUN_NAME.fullmatch(argv[2]):
        record_fetch(argv[1], argv[2], argv[3], argv[4] or None)
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
