"""A queued run's claim in run storage: the one host that may start it (`fab sweep`).

    write_claim(store, "lr-0.001-8", host="gpu2", sweep="lr", why="moved from gpu1 (lost)")
    claim = read_claim(store, "lr-0.001-8")     # {"format": 1, "run", "host", "sweep", "why", "written_at"} or None

    FACENET_STORAGE='{"url": ..., "endpoint_url": ..., "region": ..., "host": ...}' \\
        python -m trainer.storage.claims claim-of RUN
        # one line of JSON: {"run": RUN, "claim": {...} | null} (exit 0), or {"run": RUN, "error": "CODE: message"} (exit 1)

The claim is RUN/CLAIM beside the run's LATEST (layout.py). The laptop writes it when it queues the run on a host,
and rewrites it before it moves the run to another host (its host lost, or an idle host taking it). A host's sweep
runner (remote_scripts/sweep_queue.py, through remote_scripts/sweep_claims.py) asks for it before it starts or
resumes the run, and starts it only when the claim names that host: a host that stopped answering but lives on never
starts a run moved off it. The uploader never deletes it (it collects garbage under checkpoints/ only).
"""

import json
import os
import sys
import time

from trainer.storage.s3 import StorageError, Store, md5_hex

CLAIM = "CLAIM"
CLAIM_FORMAT = 1


def write_claim(store, run, host, sweep, why):
    """RUN/CLAIM naming `host`; StorageError when it cannot be written."""
    claim = {"format": CLAIM_FORMAT, "run": run, "host": host, "sweep": sweep, "why": why,
             "written_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
    data = json.dumps(claim).encode()
    store.put(run, CLAIM, data, md5_hex(data))
    return claim


def read_claim(store, run):
    """The run's claim, or None when it has none; StorageError when storage cannot be read, ValueError when the claim
    does not read as one."""
    claim, where = store.read_json(run, CLAIM)
    if claim is None:
        return None
    if not isinstance(claim, dict) or claim.get("format") != CLAIM_FORMAT or not isinstance(claim.get("host"), str):
        raise ValueError(f"{where} is not a claim of format {CLAIM_FORMAT} naming a host")
    return claim


def claim_of(settings, run):
    """The answer of `claim-of RUN` as a dict, and its exit code."""
    try:
        return {"run": run, "claim": read_claim(Store.open(settings), run)}, 0
    except StorageError as e:
        return {"run": run, "error": f"{e.code}: {e.message}"}, 1
    except ValueError as e:
        return {"run": run, "error": str(e)}, 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "claim-of" or not os.environ.get("FACENET_STORAGE"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    answer, code = claim_of(json.loads(os.environ["FACENET_STORAGE"]), argv[1])
    print(json.dumps(answer))
    return code


if __name__ == "__main__":
    sys.exit(main())
