"""A sweep's idle hosts, seen by the follower: an idle host takes a queued run off the busiest host (a host takes the
next run once its own have ended), and a host `--launch` made with nothing left to take is downed once its runs are
stored (run storage) or fetched (into results/<host>/<run>, without storage).

    moves = balance(seen, lost)            # [(from host, run, to host)]: pure, from each host's queue status
    take_over(follower, donor, run, to)    # the run off the donor's queue (unless it started it there), onto `to`'s
    down_launched(follower, host)          # stored or fetched first, then recovery's down_done (deploy/recovery/hosts.py)
"""

import time

from deploy.host import observe
from deploy.host.connection import connect_host
from deploy.recovery import hosts as recovery_hosts
from deploy.recovery import stored
from deploy.recovery.move import UPLOADER_WAIT_SECONDS
from deploy.recovery.record import iso
from deploy.runs import ledger
from deploy.sweep import hosts as sweep_hosts
from deploy.sweep import plan
from deploy.sweep.table import TERMINAL


def idle(answer):
    """A host whose runner has ended with every run of its queue ended (not one a stop on request ended: the user's)."""
    runner = answer["runner"]
    return (not runner.get("alive") and runner.get("state") != "stopped"
            and all(s.get("state") in TERMINAL for s in answer["runs"].values()))


def balance(seen, lost):
    """[(donor, run, idle host)]: each idle host takes the last queued run (the one its host would train last) of the host
    with the most queued runs."""
    answers = {h: a for h, a in seen.items() if a is not None and h not in lost}
    queued = {h: [r for r, s in a["runs"].items() if s.get("state") == "queued"] for h, a in answers.items()}
    moves = []
    for host in [h for h, a in answers.items() if idle(a)]:
        donor = max((d for d in queued if d != host and queued[d]), key=lambda d: len(queued[d]), default=None)
        if donor is None:
            break
        moves.append((donor, queued[donor].pop(), host))
    return moves


def take_over(follower, donor, run, to):
    """`run` off the donor's queue (its runner never hands over a run it has started) and onto `to`'s; True when moved."""
    record, inv, config = follower.record, follower.inv, follower.config
    target = connect_host(config, inv.for_host(donor), donor)
    try:
        taken = sweep_hosts.take(target.conn, inv.for_host(donor), record["name"], run)
    finally:
        target.conn.close()
    if not taken:
        return False
    hinv = inv.for_host(to)
    target = connect_host(config, hinv, to)
    try:
        by_run = {r["run"]: r for r in record["runs"]}
        sweep_hosts.put_queue(target, hinv, record, [by_run[run]], lambda *a, **k: None, why=f"taken by idle {to} from {donor}")
        sweep_hosts.start_runner(target.conn, hinv, record["name"])
    finally:
        target.conn.close()
    record["queues"][donor].remove(run)
    record["queues"].setdefault(to, []).append(run)
    plan.save(record)
    follower.say(f"{iso()}  {run}: taken by {to} (idle) from {donor}'s queue", "bold")
    return True


def down_launched(follower, host):
    """A launched host with nothing left: its runs' ends stored (waited for, at most UPLOADER_WAIT_SECONDS) or, without
    run storage, fetched into results/<host>/<run>; then terminated unless a run of it is still at risk."""
    record, inv = follower.record, follower.inv
    runs = record["queues"].get(host, [])
    if stored.configured(inv):
        deadline = time.monotonic() + UPLOADER_WAIT_SECONDS
        while time.monotonic() < deadline and not all((stored.pointer(inv, r) or {}).get("final") for r in runs):
            follower.sleep(2)
    else:
        hinv = inv.for_host(host)
        target = connect_host(follower.config, hinv, host)
        try:
            for run in runs:
                _, info = observe.fetch_results(target, hinv, run, "results", follower.say)
                ledger.record_fetch(host, info)
                ledger.record_fetch_on_host(target.conn, hinv, info)
        finally:
            target.conn.close()
    follower.say(recovery_hosts.down_done(follower.config, inv, host, follower.say))
    record.setdefault("downed", []).append(host)
    plan.save(record)
