"""The budget cap of a launched host (launch.max_hours, `fab launch --max-hours`).

    budget_settings(inv, "gpu1")       # {"budget": {deadline, max_hours, command, warn_seconds}} for the host agent, or {}
    describe(view)                     # "budget cap: powers off at 21:30 (8 h after launch)"

The host agent (remote_scripts/host_agent.py) keeps the cap with the laptop closed: 15 minutes
before the deadline it warns (its log and state; the hook where a notification will go), at the
deadline it stops the training (the backup of the last epoch stays) and powers the host off
(autostop.command), whatever it is doing. `fab launch` arms it (deploy.host.agent.arm_launched);
every `train` and `deploy-full` sends the cap again.
"""

from datetime import datetime

from deploy import launched

WARN_SECONDS = 15 * 60


def budget_settings(inv, label):
    entry = launched.entry(label) if label else None
    if not entry or not entry.get("max_hours") or not entry.get("launched_at"):
        return {}
    start = datetime.fromisoformat(entry["launched_at"]).timestamp()
    return {"budget": {"deadline": start + entry["max_hours"] * 3600, "max_hours": entry["max_hours"],
                       "command": inv.autostop["command"], "warn_seconds": WARN_SECONDS}}


def describe(budget):
    """One line on the cap, from the agent's settings (or its state's view)."""
    if not budget:
        return "budget cap: none"
    deadline = budget["deadline"]
    when = datetime.fromtimestamp(deadline) if isinstance(deadline, (int, float)) else datetime.fromisoformat(deadline).astimezone()
    return (f"budget cap: the host powers off at {when:%Y-%m-%d %H:%M} ({budget.get('max_hours'):g} h after launch), "
            "warning 15 minutes before, whatever it is doing")
