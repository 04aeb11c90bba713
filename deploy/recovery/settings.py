"""What the host agent gets of the inventory's `notify:` and `recovery:` (deploy.inventory.checks checks them).

    agent_settings(inv, label)         # {"notify_webhook", "host_label", "shutdown_terminates"} for host_agent.py
"""

from deploy import launched


def shutdown_terminates(inv, label):
    """A poweroff deletes this host: the inventory says so, or `fab launch` made it a one-time spot instance."""
    entry = launched.entry(label) if label else None
    one_time_spot = bool(entry and entry.get("market") == "spot" and entry.get("spot_interruption") == "terminate")
    return bool(inv.autostop.get("shutdown_terminates")) or one_time_spot


def agent_settings(inv, label):
    return {"notify_webhook": inv.notify["webhook"], "host_label": label, "shutdown_terminates": shutdown_terminates(inv, label)}
