"""`fab watch`: follow a run until it ends; move it to another host when its host is lost.

    code = watch(inv, config, target, run, say)      # the exit code of `fab watch`

Every recovery.poll_seconds the watch asks the run's host for the run's state (run_state.py's JSON,
as `fab monitor`), decides what it means (machine.decide), records the decision (record.py) and
acts: wait; end (finished 0, stopped 3, failed: the run's own exit code, gave up 10); or recover: move the run
from storage (or the lost host's own copy) to the next host that takes it (move.py says how, step by step).
With recovery.down_when_done, a host `fab launch` made is terminated once its run finished and is stored.

A host that does not answer is retried every round; only after recovery.unreachable_minutes without an
answer, and without a new epoch of its launch arriving in storage (proof that the run goes on: a network
problem, not a lost run), is the run moved. The lost host is always a candidate once it answers again,
listed in recovery.hosts or not. When no host can take the run, placement is tried again every round,
with a backoff, until recovery.give_up_minutes have passed; only then is `failed` sent. A run that failed
on its own is never restarted, except a trainer ended by SIGKILL, restarted in place up to
recovery.max_restarts_on_kill times (one kill is no proof of a repeatable out-of-memory).

A run has one owner: the launch that may train it. When the run moves to another host, the launch it left
is fenced as soon as its host answers again (its record keeps the fences still to do, tried at most every
FENCE_RETRY_SECONDS): RUN/fenced.json names it there, its trainer stops at its next epoch end without a
result, its uploader and host agent stand down (remote_scripts/run_state.py fence). The old launch's
uploader fences it by itself too when it finds the new launch's pointer in storage.
"""

import time

from deploy.host import agent, training
from deploy.host.connection import connect_host
from deploy.recovery import hosts as recovery_hosts
from deploy.recovery import machine, move, stored
from deploy.recovery.look import finished_summary, look, poweroff_phrase, progress
from deploy.recovery.move import UPLOADER_WAIT_SECONDS
from deploy.recovery.notify import Sender
from deploy.recovery.record import Record, iso
from deploy.runs import storage

AGENT_ROUND_WAIT_SECONDS = 15  # the finished notification waits this long for the host agent's word on the poweroff
FENCE_RETRY_SECONDS = 10  # a fence still to do is tried again (one SSH connection to a host that may be down) this often


class Watch:
    """One watch of one run: `loop()` until the run ends; its host changes with each recovery."""

    def __init__(self, inv, config, target, run, say, record, sleep=time.sleep):
        self.inv, self.config, self.run, self.say, self.record, self.sleep = inv, config, run, say, record, sleep
        self.host, self.target = target.label, target  # the host's inventory name (or user@address:port)
        self.sender = Sender(inv, record.notifications, say)
        self.shown = None
        self.fence_tried = 0.0

    def loop(self):
        poll = float(self.inv.recovery["poll_seconds"])
        while True:
            self.fence_old_launches()
            seen = look(self.target, self.inv.for_host(self.host), self.run)
            if not seen["reachable"] and stored.configured(self.inv):
                seen["stored"] = stored.pointer(self.inv, self.run)
            decision = machine.decide(self.record.data, seen, time.time(), self.inv.recovery)
            if self.record.note(decision, seen, time.time()):
                self.say(f"{iso()}  {decision.state}: {decision.reason}", "bold" if decision.action != "wait" else None)
            if seen["reachable"] and decision.state == "following" and seen["info"].get("agent_alive") is False:
                self.start_agent()
            if seen["reachable"] and decision.state == "following":
                line = progress(seen["info"])
                if line != self.shown:
                    self.say(f"{iso()}  {self.host}: {line}", "dim")
                    self.shown = line
            if decision.action == "end":
                return self.end(decision, seen)
            if decision.action == "recover":
                code = move.recover(self, decision, seen)
                if code is not None:
                    return code
                continue
            if decision.action == "restart":
                self.restart(decision, seen)
            self.sleep(poll)

    # --- ending ---------------------------------------------------------------------------

    def end(self, decision, seen):
        info = (seen.get("info") or {}) if seen["reachable"] else {}
        run_dir = info.get("run_dir")
        if decision.state == "finished" and run_dir:
            metrics = info.get("metrics") or {}
            summary = finished_summary(metrics)
            poweroff = self.poweroff_said(info)
            self.sender.send_shared(self.target.conn, self.inv.for_host(self.host), run_dir, f"finished:{self.run}", "finished",
                                    f"finished: run {self.run} on {self.host}" + (f": {summary}" if summary else "")
                                    + (f"; {poweroff}" if poweroff else ""),
                                    run=self.run, host=self.host)
        elif decision.state == "failed" and run_dir:
            launch_id = (info.get("launch") or {}).get("launch_id") or "legacy"
            self.sender.send_shared(self.target.conn, self.inv.for_host(self.host), run_dir, f"failed:{launch_id}", "failed",
                                    f"failed: run {self.run} on {self.host}: {machine.failure_reason(info)}",
                                    run=self.run, host=self.host, exit_code=decision.exit_code)
        elif decision.state == "gave-up":
            self.sender.send(f"gave-up:{self.record.data['restarts']}", "failed", f"failed: run {self.run}: {decision.reason}",
                             run=self.run, host=self.host, reason=decision.reason)
        if decision.state == "finished" and seen["reachable"] and self.inv.recovery["down_when_done"]:
            self.down_when_done(seen)
        self.say(f"watch: {decision.reason}; exit {decision.exit_code}", "bold" if decision.exit_code == 0 else "bold red")
        return decision.exit_code

    def poweroff_said(self, info, seconds=AGENT_ROUND_WAIT_SECONDS):
        """What the host's agent says of its poweroff once it has seen the run's end (it looks every few seconds); None
        when it says nothing within `seconds` (no agent running there, or the host stopped answering)."""
        ended_at = (info.get("exit") or {}).get("ended_at")
        deadline = time.monotonic() + seconds
        while True:
            try:  # not quick: the agent's view too
                full = training.run_state(self.target.conn, self.inv.for_host(self.host), run=self.run, log_lines=0)
            except Exception:  # noqa: BLE001 - the notification goes without it
                return None
            said = poweroff_phrase(full.get("agent"), ended_at)
            if said or not full.get("agent_alive") or time.monotonic() >= deadline:
                return said
            time.sleep(1)

    def down_when_done(self, seen):
        """recovery.down_when_done: a host `fab launch` made is terminated once its finished run is stored (its uploader
        is given UPLOADER_WAIT_SECONDS to store the end)."""
        if stored.uploader_busy(seen["info"]):
            hinv = self.inv.for_host(self.host)
            stored.wait_uploader(lambda: look(self.target, hinv, self.run)["info"], UPLOADER_WAIT_SECONDS)
        self.say(f"{iso()}  {recovery_hosts.down_done(self.config, self.inv, self.host, self.say)}", "bold")

    # --- keeping the run going (the moves themselves: move.py) ------------------------------

    def start_agent(self):
        """The run's host agent died (a kill, the OOM killer): started again, with the inventory's settings, so that its
        uploader is revived, its notifications sent and autostop armed. Never raises: the next round tries again."""
        try:
            agent.configure(self.target.conn, self.inv.for_host(self.host), self.host)
            self.say(f"{iso()}  the host agent on {self.host} was not running: started again", "yellow")
            self.record.transition(self.record.data["state"], f"host agent on {self.host} started again (it was not running)")
        except Exception as e:  # noqa: BLE001 - said; the next round tries again
            self.say(f"{iso()}  the host agent on {self.host} is not running and could not be started: {type(e).__name__}: {e}", "yellow")

    def fence_old_launches(self):
        """Fence each launch this run left behind whose host answers now (see the module docstring); the others stay to do."""
        fences = self.record.data.get("fences") or []
        if not fences or time.monotonic() - self.fence_tried < FENCE_RETRY_SECONDS:
            return
        self.fence_tried = time.monotonic()
        left = []
        for item in fences:
            try:
                target = connect_host(self.config, self.inv.for_host(item["host"]), item["host"])
                try:
                    done = training.fence(target.conn, self.inv.for_host(item["host"]), self.run, item["launch_id"], item["reason"])
                finally:
                    target.conn.close()
            except Exception:  # noqa: BLE001 - the host does not answer yet: next time
                done = False
            if done:
                self.record.transition(self.record.data["state"], f"fenced launch {item['launch_id']} on {item['host']}: it stops "
                                                                  "at its next epoch end without a result")
                self.say(f"{iso()}  {item['host']} answers again: its launch {item['launch_id']} of run {self.run} is fenced (it stops at "
                         "its next epoch end, without a result)", "bold")
            else:
                left.append(item)
        self.record.data["fences"] = left
        self.record.save()

    def restart(self, decision, seen):
        """A trainer ended by SIGKILL: `train --resume` on its own host (machine.killed allowed it)."""
        info = seen.get("info") or {}
        epoch = (info.get("status") or {}).get("epoch") or 0
        killed_launch = machine.ended_launch(info)
        self.record.add_kill(epoch, killed_launch)
        if move.run_fab(self, self.host, "train", "--resume"):
            self.record.transition("following", f"restarted on {self.host} from epoch {epoch} after a SIGKILL")
            self.say(f"{iso()}  restarted: run {self.run} on {self.host} from epoch {epoch}", "bold green")
            kills = len(self.record.data.get("kills") or [])
            self.sender.send(f"restarted:{killed_launch or kills}", "recovered",
                             f"recovered: run {self.run} restarted on {self.host} from epoch {epoch} "
                             f"after its trainer was killed (SIGKILL; restart {kills} of at most "
                             f"{self.inv.recovery['max_restarts_on_kill']})", run=self.run, host=self.host, epoch=epoch)
        else:  # tried again at a later round (machine.killed counts the tries), after a backoff
            tries = max((k.get("tries", 1) for k in self.record.data.get("kills") or []), default=1)
            self.sleep(min(60.0, float(self.inv.recovery["poll_seconds"]) * 2 ** tries))

    def move_to(self, name):
        try:
            if self.target is not None:
                self.target.conn.close()
        except Exception:  # noqa: BLE001, S110
            pass
        self.host, self.shown = name, None
        self.target = connect_host(self.config, self.inv.for_host(name), name)

    def give_up(self, reason):
        self.record.transition("gave-up", reason)
        return self.end(machine.Decision("gave-up", "end", reason, machine.GAVE_UP), {"reachable": False})


def watch(inv, config, target, run, say):
    """Follow `run` on `target` (deploy.host.connection.Target) until it ends; the exit code of `fab watch`."""
    recovery_hosts.check_hosts(inv)
    if stored.configured(inv):  # a store that cannot be opened here (AWS_PROFILE, storage.region ...): said now, not at recovery
        storage.open_store(inv)
    with Record.held(run, target.label) as record:
        record.save()
        return Watch(inv, config, target, run, say, record).loop()
