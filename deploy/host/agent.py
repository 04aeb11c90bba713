"""The host agent (remote_scripts/host_agent.py) from the laptop: heartbeat, settings, autostop.

    keeper = Keeper(conn, heartbeat(inv), beat_seconds()); keeper.start()   # deploy.host.session: every task
    outcome = configure(conn, inv, label)              # settings from the inventory; starts the agent
    outcome = configure(conn, inv, label, autostop={"idle_seconds": 1800, "command": "..."})   # arm
    outcome = configure(conn, inv, label, autostop=None)                                       # disarm
    arm_launched(target, inventory_path, say)          # right after `fab launch`: code synced, autostop and budget cap armed
    run = start_training(conn, inv, label, say, run_name="r1")  # settings first, then training.launch

The agent runs on the host, so autostop and the spot watcher work with the laptop closed.
A task is activity for autostop from its first command (which touches the heartbeat) to its end:
a keeper thread touches the heartbeat every BEAT_SECONDS, and renews the lease of the host lock
the task holds (deploy.host.lock), through the invocation's bookkeeping command while it holds the
lock (deploy.host.bookkeeping: no new command), else on a channel of the task's own SSH connection
(rsync's OpenSSH connection plays no part).
"""

import json
import os
import shlex
import threading

from deploy import launched
from deploy.errors import DeployError, LocalInputError
from deploy.host import sync
from deploy.host.budget import budget_settings
from deploy.host.budget import describe as describe_budget
from deploy.host.quoting import rjoin, rq
from deploy.host.training import launch as launch_training
from deploy.host.training import script
from deploy.inventory import load_inventory
from deploy.recovery import settings as recovery_settings
from deploy.runs import storage
from trainer.run_format import run_format

KEEP = object()  # configure(): leave autostop as the host has it


def agent_dir(inv):
    return rjoin(inv.remote["runs_dir"], run_format.AGENT_DIR)


def heartbeat(inv):
    return rjoin(agent_dir(inv), "heartbeat")


def touch(conn, inv):
    """The task's next command also touches the heartbeat (see HostConnection.touch_first)."""
    conn.touch_first = heartbeat(inv)


BEAT_ENV = "FACENET_TASK_BEAT_SECONDS"  # tests beat faster than the default
BEAT_SECONDS = 30  # at most 60: lock.LEASE_SECONDS allows three missed renewals at 60 s


def beat_seconds():
    value = os.environ.get(BEAT_ENV) or BEAT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if not 0 < seconds <= 60:
        raise LocalInputError(f"{BEAT_ENV} expects seconds between a keeper's beats, above 0 and at most 60. Received: {value!r}")
    return seconds


class Keeper(threading.Thread):
    """Touches the heartbeat every `seconds`, and renews the host lock's lease while this task holds it:
    through `via` (the bookkeeping command, deploy.host.bookkeeping) when it is open, else on a channel of
    the task's open connection; a beat that fails is skipped (the connection's own keepalives decide
    whether the host is lost)."""

    def __init__(self, conn, heartbeat_path, seconds):
        super().__init__(daemon=True, name="autostop-keeper")
        self.conn, self.path, self.seconds = conn, heartbeat_path, seconds
        self.via = None
        self.stopped = threading.Event()
        self.beats = 0

    def run(self):
        while not self.stopped.wait(self.seconds):
            try:
                self.beat()
            except Exception:  # noqa: BLE001, S110 - a missed beat is no reason to disturb the task
                pass

    def beat(self):
        via = self.via
        if via is not None and via.open:
            if via.beat():
                self.beats += 1
            return
        transport = self.conn.transport if self.conn.is_connected else None
        if transport is None or not transport.is_active():
            return  # not connected yet: the task's first command touches the heartbeat
        channel = transport.open_session(timeout=self.seconds)
        try:
            channel.exec_command(f"touch {rq(self.path)} 2>/dev/null")
            if channel.status_event.wait(max(self.seconds, 10)):
                self.beats += 1
        finally:
            channel.close()

    def stop(self):
        self.stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=2)


def autostop_settings(inv, minutes):
    """Autostop armed for `minutes` idle minutes, as the agent's settings: once the run's end is stored or fetched, it waits
    only autostop.done_minutes (when shorter)."""
    done = inv.autostop["done_minutes"]
    return {"idle_seconds": minutes * 60, "command": inv.autostop["command"], "wait_for": inv.autostop["wait_for"],
            "done_seconds": done * 60 if done else None}


def inventory_autostop(inv):
    """The inventory's autostop as agent settings, or KEEP when the inventory sets none (a `fab autostop` stays)."""
    minutes = inv.autostop["idle_minutes"]
    return autostop_settings(inv, minutes) if minutes else KEEP


def configure(conn, inv, label, autostop=KEEP):
    """Send the settings (tmux session, EC2 metadata, price, stall threshold, and autostop unless KEEP) and start the
    agent if it is not running; returns host_agent.py's outcome (settings, boot, started)."""
    changes = {"session": inv.tmux_session, "metadata_url": inv.ec2["metadata_url"],
               "metadata_explicit": inv.ec2.get("metadata_url_explicit", True), "poll_seconds": inv.ec2["poll_seconds"],
               "spot_grace_seconds": inv.ec2["spot_grace_seconds"], "price_per_hour": inv.price_of(label),
               "stall_seconds": inv.stall_minutes * 60 if inv.stall_minutes else None}  # autostop counts a stalled run as idle
    if autostop is not KEEP:
        changes["autostop"] = autostop
    changes.update(budget_settings(inv, label))  # a launched host's cap (launch.max_hours), sent again at every configure
    changes.update(recovery_settings.agent_settings(inv, label))  # webhook, the host's name, autostop's guard
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


def arm_launched(target, inventory_path, say):
    """Right after `fab launch`: sync the code and configure the agent, which then holds autostop (--idle-minutes, else
    the inventory's autostop.idle_minutes, else launch.autostop_minutes; `train` arms autostop.idle_minutes again when
    set) and the budget cap (launch.max_hours)."""
    inv = load_inventory(inventory_path).for_host(target.host_name)
    sync.sync_code(target, inv, say)
    minutes = (launched.entry(target.label) or {}).get("autostop_minutes")  # --idle-minutes, else the inventory's
    outcome = configure(target.conn, inv, target.label, autostop=autostop_settings(inv, minutes) if minutes else KEEP)
    say(describe(outcome["settings"], outcome["boot"]))
    say(describe_budget(outcome["settings"].get("budget")))


def describe(settings, boot=None):
    """One sentence on autostop, for the task that armed or disarmed it."""
    auto = settings.get("autostop")
    if not auto:
        return "autostop: off" + (f" ({boot})" if boot else "")
    waits = {"ssh": "no SSH login", "gpu": "no process on the GPU"}
    done = auto.get("done_seconds")
    text = (f"autostop: armed: the host runs `{auto['command']}` after {auto['idle_seconds'] / 60:.4g} idle minutes "
            + (f"({done / 60:.4g} once its run's end is stored or fetched) " if done and done < auto["idle_seconds"] else "")
            + f"({', '.join(['no training running', 'no fab task'] + [waits[w] for w in auto.get('wait_for', []) if w in waits])})")
    return text + (f"; {boot}" if boot else "")


def start_training(conn, inv, label, say, **launch):
    """The agent gets the inventory's settings (autostop, EC2 metadata, price) first, then the training
    starts (`training.launch(conn, inv, say, **launch)`, priced at the host's price); returns the run name."""
    autostop = inventory_autostop(inv)
    outcome = configure(conn, inv, label, autostop=autostop)
    if autostop is not KEEP:
        say(describe(outcome["settings"], outcome["boot"]))
    if outcome["settings"].get("budget"):
        say(describe_budget(outcome["settings"]["budget"]))
    if "storage" not in launch:  # the run's checkpoints in object storage, when the inventory sets storage.url
        launch["storage"] = storage.launch_settings(conn, inv, label, launch.get("tf_config"), say)
    return launch_training(conn, inv, say, price_per_hour=inv.price_of(label), **launch)
