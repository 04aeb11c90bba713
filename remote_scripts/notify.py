#!/usr/bin/env python3
"""Notifications: one JSON POST per event to a webhook (inventory `notify.webhook`), each event once.

    sent = send_once(url, record_path, key, event, text, by="agent", **fields)   # None if `key` was sent already
    python3 notify.py claim RECORD_PATH KEY BY      # `fab watch` over SSH: {"claimed": true} if nobody sent KEY yet

The body suits Slack's and Discord's incoming webhooks alike and carries the event as data:

    {"text": "...", "content": "...", "event": "finished", "run": "r1", "host": "gpu1", "time": "...", "details": {...}}

(Slack reads `text`, Discord `content`; both ignore the other keys.) Every event has a key (e.g.
`finished:r1`, `stalled:<launch id>`); the record file (a run's `notifications.json`, or the host
agent's own for host events) lists every key claimed, by whom, when, and how the POST went. A key
is claimed under an exclusive lock before the POST, so the host agent and `fab watch` never both
send one event. A POST that fails is recorded with its error and never raises: a notification must
not fail anything, nor hold anything up: a POST has TIMEOUT_SECONDS in all, name lookup included. Standard library only (the host agent's python3).
"""

import fcntl
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from run_format import write_json

TIMEOUT_SECONDS = 5
TEXT_LIMIT = 1900  # Discord refuses `content` over 2000 characters


def iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t if t is not None else time.time()))


def payload(event, text, run=None, host=None, **details):
    """The JSON body of one notification."""
    text = text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT - 3] + "..."
    return {"text": text, "content": text, "event": event, "run": run, "host": host or socket.gethostname(), "time": iso(),
            "details": details}


def post(url, body, timeout=None):
    """POST `body` as JSON; (True, None) on a 2xx answer, else (False, why). Never raises, and never takes more
    than `timeout` seconds in all: the name lookup, the connection and the answer run in a daemon thread that is
    left behind at the deadline (urllib's own timeout bounds each read, not the whole; a lookup it does not bound)."""
    timeout = TIMEOUT_SECONDS if timeout is None else timeout
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_post(url, body, timeout)), name="notify-post", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return False, f"TimeoutError: no answer within {timeout:g} s in all (the notification's deadline)"
    return outcome[0]


def _post(url, body, timeout):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "facenet-deploy"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(1024)
            return True, None
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code} {e.reason}"
    except Exception as e:  # noqa: BLE001 - URLError, timeouts, a bad URL: a notification never fails anything
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        return False, f"{type(reason).__name__}: {reason}"[:300]


def read_record(path):
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {"sent": []}
    return record if isinstance(record, dict) and isinstance(record.get("sent"), list) else {"sent": []}


def _locked(path, change):
    """Apply `change(record)` to the record file under its lock (a sibling .lock file); returns what `change` returns."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = read_record(path)
        result = change(record)
        write_json(path, record)
        return result


def claim(path, key, by, event=None):
    """Take `key` for sending: True if nobody claimed it before (then it is recorded as claimed by `by`)."""
    def change(record):
        if any(entry.get("key") == key for entry in record["sent"]):
            return False
        record["sent"].append({"key": key, "event": event, "by": by, "claimed_at": iso(), "ok": None})
        return True

    return _locked(path, change)


def record_outcome(path, key, ok, error=None, text=None):
    def change(record):
        for entry in record["sent"]:
            if entry.get("key") == key:
                entry.update(ok=ok, error=error, sent_at=iso(), **({"text": text} if text else {}))

    _locked(path, change)


def send_once(url, path, key, event, text, by="agent", log=None, **fields):
    """Send the event `key` unless it was claimed already (record file `path`); returns (ok, error), or
    None when it had been sent. A record the disk refuses, or a failed POST, is logged (`log(message)`)
    and nothing raises."""
    log = log or (lambda message: None)
    try:
        if not claim(path, key, by, event):
            return None
    except OSError as e:  # a full disk: send anyway (once per process is the caller's to keep), say so
        log(f"notify {event}: could not record it in {path} ({e}); sending anyway")
    body = payload(event, text, **fields)
    ok, error = post(url, body) if url else (False, "no notify.webhook set")
    try:
        record_outcome(path, key, ok, error, text=body["text"])
    except OSError:
        pass
    log(f"notify {event}: " + ("sent" if ok else f"FAILED ({error})") + f": {body['text']}")
    return ok, error


def main(argv):
    if len(argv) == 4 and argv[0] == "claim":
        try:
            print(json.dumps({"claimed": claim(argv[1], argv[2], argv[3])}))
        except OSError as e:
            print(json.dumps({"claimed": True, "error": str(e)}))  # unrecorded: better twice than never
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
