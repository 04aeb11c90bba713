"""`notify:` and `recovery:` in the inventory, checked beyond their types, and what the host agent gets of them.

    check_settings(cfg, path)          # deploy.inventory calls it: an InventoryError naming the key
    agent_settings(inv, label)         # {"notify_webhook", "host_label", "shutdown_terminates"} for host_agent.py
"""

from urllib.parse import urlsplit

from deploy import launched
from deploy.errors import InventoryError


def check_settings(cfg, path):
    url = cfg["notify"]["webhook"]
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InventoryError(f"Inventory key 'notify.webhook' in {path} expects an http(s) URL (a Slack or Discord incoming "
                                 f"webhook). Received: {url!r}")
    recovery = cfg["recovery"]
    if recovery["max_restarts"] < 0:
        raise InventoryError(f"Inventory key 'recovery.max_restarts' in {path} expects how many times `fab watch` may move a run, "
                             f"0 or more. Received: {recovery['max_restarts']}")
    if recovery["max_restarts_on_kill"] < 0:
        raise InventoryError(f"Inventory key 'recovery.max_restarts_on_kill' in {path} expects how many times `fab watch` may restart "
                             f"a trainer ended by SIGKILL, 0 or more. Received: {recovery['max_restarts_on_kill']}")
    dupes = sorted({h for h in recovery["hosts"] if recovery["hosts"].count(h) > 1})
    if dupes:
        raise InventoryError(f"Inventory key 'recovery.hosts' in {path} names {dupes[0]!r} twice: list each host once, in the order to try.")


def shutdown_terminates(inv, label):
    """A poweroff deletes this host: the inventory says so, or `fab launch` made it a one-time spot instance."""
    entry = launched.entry(label) if label else None
    one_time_spot = bool(entry and entry.get("market") == "spot" and entry.get("spot_interruption") == "terminate")
    return bool(inv.autostop.get("shutdown_terminates")) or one_time_spot


def agent_settings(inv, label):
    return {"notify_webhook": inv.notify["webhook"], "host_label": label, "shutdown_terminates": shutdown_terminates(inv, label)}
