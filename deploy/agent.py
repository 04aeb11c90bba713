"""The host agent (remote_scripts/host_agent.py) from the laptop: heartbeat, settings, autostop.

    touch(conn, inv)                                   # every task: "a fab task used the host now"
    beat(conn, inv)                                    # the same, at once (a long-lived task, every minute)
    outcome = configure(conn, inv, label)              # settings from the inventory; starts the agent
    outcome = configure(conn, inv, label, autostop={"idle_seconds": 1800, "command": "..."})   # arm
    outcome = configure(conn, inv, label, autostop=None)                                       # disarm
    run = start_training(conn, inv, label, say, run_name="r1")  # settings first, then training.launch

The agent runs on the host, so autostop and the spot watcher work with the laptop closed.
"""

import json
import shlex

from deploy.errors import DeployError
from deploy.hosts import rjoin, rq
from deploy.training import launch as launch_training
from deploy.training import script

KEEP = object()  # configure(): leave autostop as the host has it


def agent_dir(inv):
    return rjoin(inv.remote["runs_dir"], ".agent")


def heartbeat(inv):
    return rjoin(agent_dir(inv), "heartbeat")


def touch(conn, inv):
    """The task's first command also touches the heartbeat (see HostConnection.touch_first)."""
    conn.touch_first = heartbeat(inv)


def beat(conn, inv):
    """Touch the heartbeat now: for a task that stays open (the TensorBoard tunnel)."""
    conn.run(f"mkdir -p {rq(agent_dir(inv))} && touch {rq(heartbeat(inv))}", hide=True, warn=True, in_stream=False)


def inventory_autostop(inv):
    """The inventory's autostop as agent settings, or KEEP when the inventory sets none (a `fab autostop` stays)."""
    minutes = inv.autostop["idle_minutes"]
    return {"idle_seconds": minutes * 60, "command": inv.autostop["command"]} if minutes else KEEP


def configure(conn, inv, label, autostop=KEEP):
    """Send the settings (tmux session, EC2 metadata, price, stall threshold, and autostop unless KEEP) and start the
    agent if it is not running; returns host_agent.py's outcome (settings, boot, started)."""
    changes = {"session": inv.tmux_session, "metadata_url": inv.ec2["metadata_url"], "poll_seconds": inv.ec2["poll_seconds"],
               "spot_grace_seconds": inv.ec2["spot_grace_seconds"], "price_per_hour": inv.price_of(label),
               "stall_seconds": inv.stall_minutes * 60 if inv.stall_minutes else None}  # autostop counts a stalled run as idle
    if autostop is not KEEP:
        changes["autostop"] = autostop
    cmd = f"python3 {script(inv, 'host_agent.py')} configure {rq(inv.remote['runs_dir'])} {shlex.quote(json.dumps(changes))}"
    out = conn.run(cmd, hide=True, warn=True, in_stream=False)
    try:
        outcome = json.loads(out.stdout)
    except ValueError:
        raise DeployError(f"The host agent did not answer (is the code synced? `fab sync-code`): "
                          f"{(out.stderr or out.stdout).strip()[-600:]}") from None
    if not outcome["ok"]:
        raise DeployError(outcome["message"])
    return outcome


def describe(settings, boot=None):
    """One sentence on autostop, for the task that armed or disarmed it."""
    auto = settings.get("autostop")
    if not auto:
        return "autostop: off" + (f" ({boot})" if boot else "")
    text = (f"autostop: armed: the host runs `{auto['command']}` after {auto['idle_seconds'] / 60:.4g} idle minutes "
            "(no training running, no fab task)")
    return text + (f"; {boot}" if boot else "")


def start_training(conn, inv, label, say, **launch):
    """The agent gets the inventory's settings (autostop, EC2 metadata, price) first, then the training
    starts (`training.launch(conn, inv, say, **launch)`, priced at the host's price); returns the run name."""
    outcome = configure(conn, inv, label, autostop=inventory_autostop(inv))
    if "boot" in outcome:
        say(describe(outcome["settings"], outcome["boot"]))
    return launch_training(conn, inv, say, price_per_hour=inv.price_of(label), **launch)
