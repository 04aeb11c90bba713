"""The sweep's table: a line per run sorted by validation (the metric that chose), the choice and its test interval, cost, ETA.

    rows = rows_of(record, seen)              # seen: {host: sweep_queue.py status, or None when it did not answer}
    print_table(console, record, rows, per_run_seconds)
    estimate_lines(n_runs, n_hosts, est, price)   # before the sweep starts: configurations x the smoke test's estimate

The test split never chooses: the table is sorted by validation UAR (a cross-validation's by its mean over folds), the
chosen run is the first finished one in that order, and only its test interval is shown beside the number of
configurations compared (every other run's test number is there for the record, not for choosing).
"""

from rich.table import Table
from rich.text import Text

TERMINAL = ("finished", "failed", "superseded")


def row_of(run, host, summary):
    """One run's row: its summary from its host (sweep_queue.py status), or what is known without it."""
    s = summary or {}
    cv = s.get("cv_mean") or {}
    validation = cv.get("uar") if s.get("folds") or cv else s.get("validation")
    test = s.get("test") or {}
    cost = s.get("cost_usd") if isinstance(s.get("cost_usd"), (int, float)) else None
    if isinstance(s.get("compute_seconds"), (int, float)) and isinstance(s.get("price_per_hour"), (int, float)):
        cost = s["compute_seconds"] / 3600 * s["price_per_hour"]
    state = s.get("state", "queued" if summary is None else "?")
    state = state.removesuffix(" (stored)") if state in ("finished (stored)", "failed (stored)") else state  # storage's word: ended
    return {"run": run["run"], "values": run["values"], "host": host, "state": state,
            "epoch": s.get("epoch"), "epochs": s.get("epochs"), "validation": validation, "cv": bool(cv),
            "test": test.get("uar"), "test_ci": (test.get("ci95") or {}).get("uar"), "cost": cost,
            "compute_seconds": s.get("compute_seconds"), "eta_seconds": s.get("eta_seconds"), "launches": s.get("launches", 0)}


def rows_of(record, seen):
    """A row per run of the sweep, sorted by validation (best first; runs without one last, in the sweep's order)."""
    where = {run: host for host, runs in record["queues"].items() for run in runs}
    rows = []
    for run in record["runs"]:
        host = where.get(run["run"])
        answer = seen.get(host)
        summary = (answer or {}).get("runs", {}).get(run["run"]) if answer else None
        row = row_of(run, host, summary)
        if host and answer is None:
            row["state"] = "unknown (host not answering)"
        rows.append(row)
    return sorted(rows, key=lambda r: (r["validation"] is None, -(r["validation"] or 0)))


def chosen(rows):
    """The finished run of the best validation (rows are sorted by it), or None."""
    return next((r for r in rows if r["state"] == "finished" and r["validation"] is not None), None)


def _num(value, fmt="{:.3f}"):
    return fmt.format(value) if isinstance(value, (int, float)) else ""


def print_table(console, record, rows, per_run_seconds=None):
    table = Table(title=Text(f"sweep {record['name']}: {len(rows)} configurations, sorted by "
                             + ("the CV mean UAR over folds" if record.get("folds") else "validation UAR") + " (the metric that chooses)"),
                  title_justify="left")
    for column in ("run", "state", "epoch", "CV mean UAR" if record.get("folds") else "validation UAR", "test UAR [95% CI]", "host", "cost"):
        table.add_column(column, no_wrap=column == "run")
    for r in rows:
        epoch = f"{r['epoch']}/{r['epochs']}" if r["epoch"] is not None else ""
        test = _num(r["test"]) + (f" [{r['test_ci'][0]:.3f}, {r['test_ci'][1]:.3f}]" if r["test_ci"] else "")
        table.add_row(Text(r["run"]), Text(r["state"]), epoch, _num(r["validation"]), test, Text(str(r["host"] or "")),
                      _num(r["cost"], "${:.2f}"))
    console.print(table)
    for line in summary_lines(rows, per_run_seconds):
        console.print(Text(line))


def summary_lines(rows, per_run_seconds=None):
    """The choice (with how many configurations were compared and its test interval), the total cost and the ETA."""
    lines = []
    best = chosen(rows)
    done = sum(r["state"] == "finished" for r in rows)
    if best and best["cv"]:  # a cross-validation's mean over its folds' held-out actors is what chose it: no other test score
        lines.append(f"chosen by the CV mean UAR among {done} finished of {len(rows)} configurations compared: {best['run']} "
                     f"(CV mean {best['validation']:.3f}); chosen by that mean, it reads high: quote a score on actors "
                     "none of the configurations was tested on")
    elif best:
        ci = f" [{best['test_ci'][0]:.3f}, {best['test_ci'][1]:.3f}]" if best["test_ci"] else ""
        lines.append(f"chosen by validation among {done} finished of {len(rows)} configurations compared: {best['run']} "
                     f"(validation {best['validation']:.3f}); its test UAR {_num(best['test'])}{ci}: quote this one, "
                     "chosen without the test split")
    costs = [r["cost"] for r in rows if r["cost"] is not None]
    lines.append(f"{done}/{len(rows)} finished; cost so far " + (f"${sum(costs):.2f}" if costs else "unknown (no price_per_hour)")
                 + eta_text(rows, per_run_seconds))
    return lines


def eta_text(rows, per_run_seconds):
    """'; ETA about 12 min': per host, its running run's ETA plus its queued runs at `per_run_seconds` each; the slowest host."""
    per_host = {}
    for r in rows:
        if r["state"] in TERMINAL:
            continue
        left = r["eta_seconds"] if r["state"] in ("running", "starting") and r["eta_seconds"] is not None else per_run_seconds
        if left is None:
            return "; ETA unknown (no smoke test measured)"
        per_host[r["host"]] = per_host.get(r["host"], 0) + left
    if not per_host:
        return ""
    return f"; ETA about {duration(max(per_host.values()))}"


def duration(seconds):
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{max(seconds, 1):.0f} s" if seconds < 90 else f"{minutes} min"


def estimate_lines(n_runs, n_hosts, est, price, host):
    """Before the sweep starts: configurations x the smoke test's measured estimate of one training, and its price."""
    if not est:
        return [f"estimate: unknown: {host} has no smoke test measured (`fab -H {host} smoke-test` measures one)"]
    one = est["seconds"]
    cost = f", about ${n_runs * one / 3600 * price:.2f} at ${price:.4g}/h" if price else " (cost: set price_per_hour to see it)"
    wall = -(-n_runs // max(n_hosts, 1)) * one
    return [f"estimate: {n_runs} configurations x {duration(one)} each (the smoke test measured on {host}) = "
            f"{duration(n_runs * one)} of training{cost}; on {n_hosts} host(s) at once about {duration(wall)}"]
