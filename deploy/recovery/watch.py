"""`fab watch`: follow a run until it ends; move it to another host when its host is lost.

    code = watch(inv, config, target, run, say)      # the exit code of `fab watch`

Every recovery.poll_seconds the watch asks the run's host for the run's state (run_state.py's JSON,
as `fab monitor`), decides what it means (machine.decide), records the decision (record.py) and
acts: wait; end (finished 0, stopped 3, failed: the run's own exit code, gave up 10); or recover:

  1. the run's last stored epoch (storage, LATEST; when the lost host still answers, after its uploader stored
     the run's end). A pointer that says the run ended by itself (finished, failed on its own, stopped on request)
     ends the watch with the run's code instead, as the host would have (machine.stored_end). A pointer of another
     run of the same name (begun at another time than the run the watch saw: the record's run_started_at) is not
     the run's: neither resumed from nor taken for its end;
  2. the next free host of recovery.hosts (hosts.py; the lost host last), else a launched one (recovery.launch);
  3. there, as a process of its own (its own lock, output, exit code): `fab -H HOST train --resume` when the host
     holds the run as its current one (the lost host, back with its disk) at an epoch no older than storage's, else
     `fab -H HOST deploy-full --resume-from STORED-RUN` (without a stored epoch, only a host that holds the run can
     take it; a host holding an older copy is passed over: it would redo the epochs stored since);
  4. the recovery recorded (the watch's record; RUN/recoveries.json on the new host, which its uploader stores),
     the user told ("recovered on HOST from epoch E"), the lost host downed if `fab launch` made it
     and recovery.launch is set; then the watch follows the run on its new host.
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

import subprocess
import sys
import time
from pathlib import Path

from deploy.errors import DeployError
from deploy.host import agent, training
from deploy.host.connection import connect_host
from deploy.inventory import load_inventory
from deploy.recovery import hosts as recovery_hosts
from deploy.recovery import machine, stored
from deploy.recovery.notify import Sender
from deploy.recovery.record import Record, iso, write_on_host
from trainer.results.visible import visible

UPLOADER_WAIT_SECONDS = 150  # a spot notice gives two minutes; the host agent waits for the upload within them
AGENT_ROUND_WAIT_SECONDS = 15  # the finished notification waits this long for the host agent's word on the poweroff
FENCE_RETRY_SECONDS = 10  # a fence still to do is tried again (one SSH connection to a host that may be down) this often


def look(target, inv, run):
    """One look at the run: {"reachable", "info", "error"}; never raises (an error is the host not answering)."""
    try:
        info = training.run_state(target.conn, inv, run=run, log_lines=0, quick=True)
        return {"reachable": True, "info": info, "error": None}
    except Exception as e:  # noqa: BLE001 - unreachable, refused, no code there: all "does not answer" for the clock
        try:
            target.conn.close()  # a fresh connection next round
        except Exception:  # noqa: BLE001, S110
            pass
        return {"reachable": False, "info": None, "error": f"{type(e).__name__}: {str(e)[:200]}"}


def progress(info):
    status = info.get("status") or {}
    last = status.get("last") or {}
    metric = "   ".join(f"{k} {last[k]:.4g}" for k in ("val_uar", "val_loss") if isinstance(last.get(k), (int, float)))
    stored = ((info.get("storage") or {}).get("stored") or {}).get("epoch")
    behind = status.get("epoch", 0) - stored if isinstance(stored, int) and isinstance(status.get("epoch"), int) else None
    storage = f"   storage {behind} epochs behind (stored: epoch {stored})" if behind and behind > 1 else ""
    return f"epoch {status.get('epoch', 0)}/{status.get('epochs', '?')}" + (f"   {metric}" if metric else "") + storage


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
                code = self.recover(decision, seen)
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

    # --- recovering -----------------------------------------------------------------------

    def recover(self, decision, seen):
        """Move the run (see the module docstring); None when it runs on a new host, else the exit code."""
        n = self.record.data["restarts"] + 1
        lost_host, reachable = self.host, seen["reachable"]
        if reachable and stored.uploader_busy(seen["info"]):  # e.g. after a spot notice: its last epoch is on its way
            self.say(f"waiting (at most {UPLOADER_WAIT_SECONDS} s) for the uploader on {lost_host} to store the run's end ...")
            hinv = self.inv.for_host(lost_host)
            stored.wait_uploader(lambda: look(self.target, hinv, self.run)["info"], UPLOADER_WAIT_SECONDS)
        epoch, url, why, end = stored.latest(self.inv, self.run, self.record.data.get("run_started_at"))
        if end is not None:  # the host could not tell, storage can: the run ended by itself (failed, stopped, finished)
            self.record.transition(end.state, end.reason)
            return self.end(end, {"reachable": False})
        if not (reachable and (seen["info"] or {}).get("state") == "preempted"):  # a spot notice: the host agent tells
            self.sender.send(f"lost:{n}", "preempted", f"preempted: run {self.run}: {decision.reason}; moving it (recovery {n})",
                             run=self.run, host=lost_host, reason=decision.reason)
        self.say(f"recovering run {self.run} (recovery {n} of at most {self.inv.recovery['max_restarts']}): "
                 + (f"from epoch {epoch} in storage ({url})" if url else f"storage cannot give it ({why}); only a host that holds it "
                                                                          "can take it"), "bold")
        self.record.transition("recovering", f"recovery {n}: {decision.reason}")
        # a host that answers and lost the run's processes (vanished) keeps its disk: its copy, newer than storage's by the
        # epoch in flight, is tried first (not after a spot notice or a shutdown: that host is going away)
        first = reachable and (seen["info"] or {}).get("state") in ("vanished", "none")
        new_host, launched_one, epoch = self.place(url, epoch, lost_host, n, lost_first=first)
        if new_host is None:
            reason = (f"{decision.reason}; no host could take it (recovery.hosts, the lost host"
                      + (", then a launched one" if self.inv.recovery["launch"]["type"] and url else "")
                      + ")" + ("" if url else f"; storage: {why}"))
            return self.retry_later(reason)
        entry = {"n": n, "host": new_host, "from_host": lost_host, "at": iso(), "from_epoch": epoch, "reason": decision.reason,
                 "launched": launched_one}
        old_launch = self.record.data.get("launch_id")
        if old_launch and new_host != lost_host:  # the launch left behind may still live (a network fault): fenced when it answers
            self.record.data.setdefault("fences", []).append({"host": lost_host, "launch_id": old_launch, "since": iso(),
                                                             "reason": f"run {self.run} moved to {new_host} (recovery {n}: {decision.reason})"})
        self.record.add_recovery(entry)
        self.move_to(new_host)
        recoveries = self.record.data["recoveries"]
        if not write_on_host(self.target.conn, self.inv.for_host(new_host), self.run, recoveries):
            self.say(f"could not write recoveries.json in the run on {new_host}; the watch's record keeps them", "yellow")
        self.sender.send(f"recovered:{n}", "recovered", f"recovered: run {self.run} on {new_host} from epoch {epoch} "
                         f"(was on {lost_host}: {decision.reason})", run=self.run, host=new_host, epoch=epoch, from_host=lost_host,
                         recovery=n)
        self.record.transition("following", f"recovered on {new_host} from epoch {epoch}")
        self.say(f"{iso()}  recovered: run {self.run} on {new_host} from epoch {epoch}", "bold green")
        if self.inv.recovery["launch"]["type"] and lost_host != new_host:
            self.say(recovery_hosts.down_lost(self.config, self.inv, lost_host, self.run, reachable, self.say))
        return None

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

    def retry_later(self, reason):
        """No host took the run: None after a backoff (the next round looks at the lost host again and retries the
        placement), or the exit code once recovery.give_up_minutes have passed since the first failed placement."""
        now, d = time.time(), self.record.data
        if not d.get("placing_since"):
            d.update(placing_since=now, placing_tries=0)
        d["placing_tries"] = d.get("placing_tries", 0) + 1
        self.record.save()
        give_up = self.inv.recovery["give_up_minutes"] * 60
        if now - d["placing_since"] >= give_up:
            return self.give_up(f"{reason}; tried {d['placing_tries']} time(s) for {(now - d['placing_since']) / 60:.1f} min "
                                f"(recovery.give_up_minutes: {self.inv.recovery['give_up_minutes']:g})")
        pause = min(300.0, float(self.inv.recovery["poll_seconds"]) * 2 ** min(d["placing_tries"], 8), give_up - (now - d["placing_since"]))
        self.record.transition("placing", f"{reason}; trying again in {pause:.0f} s (until {iso(d['placing_since'] + give_up)})")
        self.say(f"{iso()}  no host could take run {self.run}: trying again in {pause:.0f} s, until "
                 f"{iso(d['placing_since'] + give_up)} (recovery.give_up_minutes)", "yellow")
        self.sleep(max(pause, 0.0))
        return None

    def restart(self, decision, seen):
        """A trainer ended by SIGKILL: `train --resume` on its own host (machine.killed allowed it)."""
        info = seen.get("info") or {}
        epoch = (info.get("status") or {}).get("epoch") or 0
        killed_launch = machine.ended_launch(info)
        self.record.add_kill(epoch, killed_launch)
        if self.run_fab(self.host, "train", "--resume"):
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

    def place(self, url, epoch, lost_host, n, lost_first=False):
        """Continue the run on the first host that takes it: one that holds it as its current run (the lost host, back)
        with `train --resume`, any other from storage (`url`); (host name, launched?, from epoch) or (None, False, None)."""
        names = recovery_hosts.candidates(self.inv, lost_host)
        if lost_first:
            names = [lost_host] + [name for name in names if name != lost_host]
        for name in names:
            free, why, held = recovery_hosts.is_free(self.config, self.inv, name, self.run)
            if not free:
                self.say(f"  {name}: {why}", "yellow")
            elif held is not None and not machine.resume_in_place(held, epoch):  # deploy-full would refuse it: it holds the run
                self.say(f"  {name}: holds the run at epoch {held}, older than storage's epoch {epoch}: not continued from there", "yellow")
            elif held is not None:  # its own copy, as it was when the run stopped there (as new as storage's, or no storage)
                if self.run_fab(name, "train", "--resume"):
                    return name, False, held
            elif url is None:
                self.say(f"  {name}: does not hold the run, and storage cannot give it", "yellow")
            elif self.run_fab(name, "deploy-full", "--resume-from", url):
                return name, False, first_known(stored.resumed_epoch(self.run), epoch)
        if self.inv.recovery["launch"]["type"] and url:
            try:
                name = recovery_hosts.launch_replacement(self.inv, self.config, self.run, n, self.say)
            except DeployError as e:
                self.say(f"  launching a replacement failed: {e}", "red")
                return None, False, None
            self.reload_inventory()
            if self.run_fab(name, "deploy-full", "--resume-from", url):
                return name, True, first_known(stored.resumed_epoch(self.run), epoch)
        return None, False, None

    def run_fab(self, name, *task):
        """`fab -H NAME TASK...` as a process of its own (its lock, its output shown indented); True on exit 0."""
        command = [fab_program(), "-H", name, *task]
        self.say(f"  {name}: {' '.join(command[1:])}", "bold")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        for line in proc.stdout:
            self.say(f"  | {visible(line.rstrip())}", "dim")
        code = proc.wait()
        if code != 0:
            self.say(f"  {name}: {' '.join(task[:1])} exited {code}: trying the next host", "yellow")
            self.record.transition("recovering", f"{' '.join(task)} on {name} exited {code}")
        return code == 0

    def reload_inventory(self):
        self.inv = load_inventory(self.inv.path)  # a launched host is an inventory host from now on

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


def poweroff_phrase(agent, ended_at):
    """When and why the host powers off, as its agent said in its first round after the run ended (remote_scripts/
    agent_events.poweroff_plan: the agent's own `finished` notification says the same); None while it has not said."""
    said = (agent or {}).get("poweroff") or {}
    polled = (agent or {}).get("polled_at")
    if not said.get("text") or not polled or not ended_at or str(polled) <= str(ended_at):  # a round begun after the end
        return None
    return said["text"]


def finished_summary(metrics):
    from trainer.results.report import headline

    try:
        name, m = headline(metrics)
        ci = (m.get("ci95") or {}).get("uar")
        parts = [f"{name} UAR {m['uar']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")]
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        parts = []
    compute = metrics.get("compute") or {}
    if isinstance(compute.get("cost_usd"), (int, float)):
        parts.append(f"cost ${compute['cost_usd']:.2f} ({compute.get('hours', 0):.2f} h)")
    return ", ".join(parts)


def first_known(*values):
    return next((v for v in values if v is not None), None)


def fab_program():
    beside = Path(sys.executable).parent / "fab"
    return str(beside) if beside.exists() else "fab"


def watch(inv, config, target, run, say):
    """Follow `run` on `target` (deploy.host.connection.Target) until it ends; the exit code of `fab watch`."""
    recovery_hosts.check_hosts(inv)
    if stored.configured(inv):  # a store that cannot be opened here (AWS_PROFILE, storage.region ...): said now, not at recovery
        from deploy.runs import storage

        storage.open_store(inv)
    with Record.held(run, target.label) as record:
        record.save()
        return Watch(inv, config, target, run, say, record).loop()
