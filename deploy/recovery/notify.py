"""Notifications sent by `fab watch` from the laptop, with the host agent's body and record format
(remote_scripts/notify.py, loaded from there: one definition of both).

    sender = Sender(inv, record_path, say)
    sender.send("recovered:1", "recovered", "recovered: run r1 on gpu2 from epoch 3", run="r1", host="gpu2", epoch=3)
    sender.send_shared(conn, inv, run_dir, key, ...)     # an event the host agent may send too: claimed on the host first

Events only the watch can see (a host lost, a recovery, giving up) are recorded in the watch's own
record (`record_path`); events the host agent sees too (finished, failed, preempted) are claimed
in the run's notifications.json on the host, so that whichever comes first sends it, once.
A failed notification is said and recorded, never raised.
"""

import json
import shlex

from deploy.host.quoting import rjoin, rq
from trainer.run_format import host_script

remote = host_script("notify", "facenet_remote_notify")


class Sender:
    def __init__(self, inv, record_path, say):
        self.url, self.path, self.say = inv.notify["webhook"], str(record_path), say

    def send(self, key, event, text, **fields):
        """POST the event unless `key` is in the watch's record; returns (ok, error), or None (off, or sent already)."""
        if not self.url:
            return None
        outcome = remote.send_once(self.url, self.path, key, event, text, by="watch", **fields)
        if outcome is not None and not outcome[0]:
            self.say(f"notification {event} not sent ({outcome[1]}); the watch goes on", "yellow")
        return outcome

    def send_shared(self, conn, inv, run_dir, key, event, text, **fields):
        """An event the host agent may send too: sent only if the claim on the host (the run's notifications.json)
        is ours; when the host cannot be asked, the watch's own record decides."""
        if not self.url:
            return None
        record = rjoin(run_dir, "notifications.json")
        cmd = f"python3 {rq(rjoin(inv.remote['project_dir'], 'remote_scripts', 'notify.py'))} claim {rq(record)} {shlex.quote(key)} watch"
        try:
            out = conn.run(cmd, hide=True, warn=True, in_stream=False, timeout=30)
            claimed = json.loads(out.stdout.strip().splitlines()[-1])["claimed"]
        except Exception:  # noqa: BLE001 - host gone, old code on it: the watch's own record decides
            claimed = True
        if not claimed:
            return None
        return self.send(key, event, text, **fields)
