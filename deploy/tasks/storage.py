"""`fab runs`: the runs in run storage, without touching a host (deploy/runs/storage.py reads them)."""

import time
from datetime import datetime, timezone

from fabric import task
from invoke.exceptions import Exit
from rich.table import Table
from rich.text import Text

from deploy.errors import LocalInputError
from deploy.inventory import load_inventory
from deploy.runs import storage
from deploy.tasks.plumbing import as_exit, console, say
from trainer.results.visible import visible

STATES = ("starting", "running", "finished", "stopped", "failed", "preempted", "vanished")  # a stored run's (layout.py)


@task(help={"state": f"only the runs in this state ({', '.join(STATES)})"})
def runs(c, state=None):
    """List every run in run storage (storage.url): name, host, state, epochs, best validation, test UAR, cost, last update.

    Reads storage only (one listing, and each run's pointer LATEST), never a host: it works with
    the hosts gone. `fab fetch-results --run NAME` brings a run's files; `fab -H HOST deploy-full
    --resume-from NAME` continues it on HOST. A run whose pointer does not read is listed as unreadable,
    with the reason. Exit 2 when no storage is set, it cannot be opened here (AWS_PROFILE, storage.region)
    or --state names no state; 1 when storage cannot be read (the message names what to check).
    """
    try:
        if state is not None and state not in STATES:
            raise LocalInputError(f"--state expects one of {', '.join(STATES)}. Received: {state!r}")
        inv = load_inventory()
        store = storage.open_store(inv)
        rows = storage.stored_runs(store)
    except Exit:
        raise
    except BaseException as e:
        raise as_exit(e) from None
    shown = [r for r in rows if state is None or (r[1] or {}).get("state") == state]
    if not shown:
        say(f"No runs{f' in state {state}' if state else ''} in {store.where.url}.")
        return
    console.print(runs_table(shown, store.where.url))


def runs_table(rows, url):
    table = Table(title=Text(visible(f"Runs in {url}")), title_justify="left")
    for column in ("run", "host", "state", "epochs", "best validation", "test UAR [95% CI]", "cost", "last update", "recovered"):
        table.add_column(column, no_wrap=column in ("run", "state"))
    for name, pointer, problem in rows:
        cells = None
        if pointer is not None:
            try:
                cells = row(name, pointer)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:  # a summary edited or damaged in storage
                problem = f"its LATEST's summary does not read ({type(e).__name__}: {e})"
        if cells is None:
            table.add_row(Text(visible(name)), "", Text("unreadable" if problem else "no pointer", style="red"),
                          Text(visible(problem or "no LATEST (its first checkpoint was not completed)"), style="dim"), "", "", "", "", "")
            continue
        table.add_row(*(Text(visible(str(v))) for v in cells))
    return table


def row(name, pointer):
    """The table's cells of one stored run."""
    s = pointer.get("summary") or {}
    epoch, total = s.get("epoch", pointer.get("epoch")), s.get("epochs")
    epochs = f"{epoch if isinstance(epoch, int) else '?'}/{total if isinstance(total, int) and total > 0 else '?'}"
    best = s.get("best") or {}
    best_text = f"{best.get('metric')} {best['value']:.3f} (epoch {best.get('epoch')})" if isinstance(best.get("value"), (int, float)) else ""
    metrics = s.get("metrics") or {}
    test = ""
    if isinstance(metrics.get("uar"), (int, float)):
        ci = (metrics.get("ci95") or {}).get("uar")
        test = f"{metrics['uar']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        test += "" if metrics.get("split") == "test" else f" ({metrics.get('split')})"  # no test actors: the validation's
    cost = f"${s['cost_usd']:.2f}" if isinstance(s.get("cost_usd"), (int, float)) else (
        f"{s['compute_seconds'] / 3600:.2f} h" if isinstance(s.get("compute_seconds"), (int, float)) else "")
    state = pointer.get("state", "?")
    updated = ago(pointer.get("written_at")) + lag_estimate(state, pointer.get("written_at"), s.get("seconds_per_epoch"))
    return name, pointer.get("host") or "?", state, epochs, best_text, test, cost, updated, recovered(s)


def lag_estimate(state, written_at, seconds_per_epoch):
    """For a running run whose last stored epoch is older than two of its epochs: how many epochs storage is likely
    behind its host (an estimate from its seconds per epoch: `fab runs` reads no host; `fab monitor` tells exactly)."""
    if state not in ("starting", "running") or not isinstance(seconds_per_epoch, (int, float)) or seconds_per_epoch <= 0:
        return ""
    try:
        seconds = time.time() - datetime.fromisoformat(written_at).astimezone(timezone.utc).timestamp()
    except (TypeError, ValueError):
        return ""
    behind = int(seconds // seconds_per_epoch)
    return f" (~{behind} epochs behind its host, or it stopped: `fab monitor` says)" if behind >= 2 else ""


def recovered(summary):
    """'2x: gpu1 -> gpu2 at epoch 3, ...' from the run's recoveries.json (`fab watch`), or ''."""
    found = summary.get("recoveries")
    if not isinstance(found, list) or not found:
        return ""
    return f"{len(found)}x: " + ", ".join(f"{r.get('from_host')} -> {r.get('host')} at epoch {r.get('from_epoch')}" for r in found
                                         if isinstance(r, dict))


def ago(iso):
    try:
        seconds = time.time() - datetime.fromisoformat(iso).astimezone(timezone.utc).timestamp()
    except (TypeError, ValueError):
        return "?"
    if seconds < 90:
        return f"{max(0, seconds):.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago" if seconds < 172800 else f"{seconds / 86400:.0f} days ago"
