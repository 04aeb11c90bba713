"""The laptop's side of a sweep's claims (trainer/storage/claims.py): which host may start a queued run.

    write(inv, record, ["lr-0.001-8"], "gpu2", "queued")   # each run's claim in run storage names gpu2; nothing without storage

The laptop writes a run's claim before it puts the run in a host's queue (deploy/sweep/hosts.py put_queue): when the sweep
queues it, when the follower moves it off a lost host, when an idle host takes it. A host's runner starts a run only when
its claim names that host (remote_scripts/sweep_claims.py), so a host that stops answering but lives on never starts a
run that was moved off it.
"""

from deploy.runs import storage


def write(inv, record, runs, host, why):
    """Each run's claim names `host`; DeployError naming the store and what to check when one cannot be written (the
    queue is then not put: a move is tried again next round)."""
    if not storage.enabled(inv) or not runs:
        return
    from trainer.storage.claims import write_claim
    from trainer.storage.s3 import StorageError

    store = storage.open_store(inv)
    for run in runs:
        try:
            write_claim(store, run, host, record["name"], why)
        except StorageError as e:
            raise storage.failure(e, store, f"Writing the claim of {run} (which host may start it)", inv) from None
