"""The sweep's follower on the laptop: every recovery.poll_seconds it asks each host for its queue's state, says what
changed, starts a runner that died, and moves the runs of a host lost for recovery.unreachable_minutes, as `fab watch`
moves a run (deploy/recovery: the last stored epoch, the run uploaded to a host that answers, the old launch fenced
once its host answers again). The hosts train without it; it only watches, moves and, with --launch, downs.

    code = Follower(config, inv, record, say, console).loop()   # 0 every run finished, 1 a run failed, 3 stopped on request
    seen = look_all(config, inv, record)                        # {host: its queue's status, or None}
"""

import time

from deploy.errors import DeployError
from deploy.host import sync
from deploy.host.connection import connect_host
from deploy.recovery import stored
from deploy.recovery.record import iso
from deploy.runs import storage
from deploy.sweep import hosts as sweep_hosts
from deploy.sweep import idle, plan, unanswered
from deploy.sweep.table import TERMINAL, print_table, rows_of

MAX_FAILED_STARTS = 3  # a host's runner that failed to start a run this many times in a row: the follower stops (exit 1)


def look(config, inv, name, host):
    """The host's queue status (sweep_queue.py status), or None when it does not answer."""
    hinv = inv.for_host(host)
    try:
        target = connect_host(config, hinv, host)
        try:
            return sweep_hosts.queue_status(target.conn, hinv, name)
        finally:
            target.conn.close()
    except (DeployError, OSError, EOFError, Exception):  # noqa: BLE001 - paramiko's and socket's errors: not answering
        return None


def look_all(config, inv, record):
    """Every host's answer; for a host that gives none (lost, or not answering), its runs as run storage has them."""
    seen = {}
    for host, runs in record["queues"].items():
        seen[host] = None if host in record["lost"] else look(config, inv, record["name"], host)
        if seen[host] is None and stored.configured(inv):
            found = {run: stored_summary(stored.pointer(inv, run)) for run in runs}
            seen[host] = {"runner": {}, "runs": {run: s for run, s in found.items() if s}} if any(found.values()) else None
    return seen


def stored_summary(pointer):
    """A run's summary (as sweep_queue.py gives it) from its pointer in run storage, or None."""
    if not pointer:
        return None
    s = pointer.get("summary") if isinstance(pointer.get("summary"), dict) else {}
    metrics = s.get("metrics") if isinstance(s.get("metrics"), dict) else {}
    test = {"uar": metrics.get("uar"), "ci95": metrics.get("ci95") or {}} if metrics.get("split") == "test" else None
    return {"state": f"{pointer.get('state')} (stored)", "epoch": s.get("epoch", pointer.get("epoch")), "epochs": s.get("epochs"),
            "validation": val_uar(s), "test": test, "cost_usd": s.get("cost_usd"),
            "compute_seconds": s.get("compute_seconds")}


def val_uar(summary):
    """The validation UAR of a stored summary: its best epoch's value when the monitor was val_uar (none otherwise: a
    loss or an accuracy never ranks the sweep)."""
    best = summary.get("best") or {}
    return best.get("value") if best.get("metric") == "val_uar" else None


def stopped_runners(seen):
    """The hosts whose runner ended because a run of theirs was stopped on request."""
    return {host for host, answer in seen.items() if answer and answer["runner"].get("state") == "stopped"
            and not answer["runner"].get("alive")}


class Follower:
    """One follow of one sweep (module docstring)."""

    def __init__(self, config, inv, record, say, console, sleep=time.sleep):
        self.config, self.inv, self.record, self.say, self.console, self.sleep = config, inv, record, say, console, sleep
        self.last_answer = {host: time.time() for host in record["queues"]}
        self.shown = {}
        self.last = {}  # run -> its last summary seen (what a lost host's run was doing)
        self.gave_up = None  # why following ended: a host whose runs cannot start (said, exit 1)
        self.restarts = {}  # host -> this follow's starts of its runner since it was last seen alive
        self.unanswered = unanswered.Unanswered(self)  # without run storage: hosts not answering, whose runs wait on them

    def loop(self):
        poll = float(self.inv.recovery["poll_seconds"])
        while True:
            seen = self.round()
            rows = rows_of(self.record, seen)
            if self.gave_up:
                self.say(self.gave_up, "red")
                return self.end(rows, code=1)
            if all(r["state"] in TERMINAL for r in rows):
                return self.end(rows)
            waiting = stopped_runners(seen)
            if all(r["state"] in TERMINAL or r["host"] in waiting or r["host"] in self.unanswered.hosts
                   or (r["state"] == "stopped" and r["host"] in self.record["lost"]) for r in rows):
                if self.unanswered.blocks(rows):  # nothing else can progress: the user's call (exit 6)
                    return self.end(rows, code=self.unanswered.give_up())
                self.say(f"stopped on request (`fab stop`): the runners of {', '.join(sorted(waiting)) or 'no host'} ended; "
                         f"`fab sweep {self.record['name']}` continues the sweep", "yellow")
                return self.end(rows, code=3)
            self.sleep(poll)

    def round(self):
        """One look at every host: changes said, dead runners started again, fences done, lost hosts' runs moved."""
        seen = {}
        for host in list(self.record["queues"]):
            if host in self.record["lost"]:  # its runs as last seen (those left on it ended there, or wait to move)
                self.fence_when_back(host)
                if self.left_on(host):
                    self.move_lost(host)
                seen[host] = {"runner": {}, "runs": {r: self.known(r) for r in self.record["queues"][host]}}
                continue
            answer = look(self.config, self.inv, self.record["name"], host)
            seen[host] = answer
            if answer is None:
                if time.time() - self.last_answer[host] >= self.inv.recovery["unreachable_minutes"] * 60:
                    self.move_lost(host) if stored.configured(self.inv) else self.unanswered.note(host, self.left_on(host))
                continue
            self.last_answer[host] = time.time()
            self.unanswered.back(host)
            self.said(host, answer)
            self.attempt(f"starting {host}'s runner again", self.keep_runner, host, answer)
        self.use_idle(seen)
        return seen

    def attempt(self, what, step, *args):
        """`step(*args)`, or its failure said (a host or storage that stopped answering meanwhile): tried again next round."""
        try:
            return step(*args)
        except (DeployError, OSError, EOFError) as e:
            self.say(f"{iso()}  {what} failed ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                     "trying again", "yellow")
            return None

    def use_idle(self, seen):
        """Idle hosts take queued runs off the busy ones; a launched one with nothing left to take is downed."""
        for donor, run, to in idle.balance(seen, self.record["lost"]):
            self.attempt(f"moving {run} from {donor} to idle {to}", idle.take_over, self, donor, run, to)
        queued = any(s.get("state") == "queued" for a in seen.values() if a for s in a["runs"].values())
        for host in self.record["launched"]:
            answer = seen.get(host)
            done = host in self.record.get("downed", []) or host in self.record["lost"]
            if not done and answer is not None and idle.idle(answer) and not queued:
                self.attempt(f"downing {host}", idle.down_launched, self, host)

    def known(self, run):
        """What is known of a run whose host is lost: its last summary seen, else its end as recorded by an earlier
        follow (the record's `ended`), else run storage's word."""
        ended = self.record.setdefault("ended", {}).get(run)
        stored_one = stored_summary(stored.pointer(self.inv, run)) if not self.last.get(run) and not ended else None
        return self.last.get(run) or ({"state": ended} if ended else None) or stored_one or {"state": "lost"}

    def said(self, host, answer):
        ended = self.record.setdefault("ended", {})
        for run, s in answer["runs"].items():
            self.last[run] = s
            if s["state"] in TERMINAL and ended.get(run) != s["state"]:  # kept: a later follow may find the host lost
                ended[run] = s["state"]
                plan.save(self.record)
            line = f"{s['state']}" + (f", epoch {s['epoch']}/{s['epochs']}" if s.get("epoch") is not None else "")
            if self.shown.get(run) != line:
                self.shown[run] = line
                self.say(f"{iso()}  {run} on {host}: {line}", "dim")

    def keep_runner(self, host, answer):
        """A runner that ended while its queue holds runs not done (a reboot, a kill) is started again; not one that
        ended because a run of it was stopped on request (`fab stop`: the user's word; `fab sweep NAME` continues)."""
        runner = answer["runner"]
        left = [r for r, s in answer["runs"].items() if s["state"] not in TERMINAL]
        if runner.get("alive") or not left or runner.get("state") == "stopped":
            self.restarts.pop(host, None)
            return
        why = runner.get("state", "never started") + (f": {runner['error']['reason']}" if isinstance(runner.get("error"), dict) else "")
        if runner.get("state") == "failed to start" and runner.get("failed_starts", 0) >= MAX_FAILED_STARTS:
            self.gave_up = (f"{host}: its sweep runner failed to start {runner['error']['run'] if runner.get('error') else 'a run'} "
                            f"{runner['failed_starts']} times ({why}); fix that on {host}, then `fab sweep {self.record['name']}`")
            return
        hinv = self.inv.for_host(host)
        if self.restarts.get(host, 0) >= MAX_FAILED_STARTS:  # started, and never seen alive: e.g. its tmux session taken
            self.gave_up = (f"{host}: its sweep runner did not come up after {self.restarts[host]} starts ({why}); is its tmux "
                            f"session {sweep_hosts.runner_session(hinv, self.record['name'])} held by something else? "
                            f"(`tmux ls` on {host}) Fix that, then `fab sweep {self.record['name']}`")
            return
        self.restarts[host] = self.restarts.get(host, 0) + 1
        self.say(f"{iso()}  {host}: its sweep runner is not running ({why}); starting it again", "yellow")
        target = connect_host(self.config, hinv, host)
        try:
            sweep_hosts.start_runner(target.conn, hinv, self.record["name"])
        finally:
            target.conn.close()

    # --- a lost host ------------------------------------------------------------------------------

    def left_on(self, host):
        """The lost host's runs still to move: not ended, and not stopped on request (the user's: a rerun resumes it)."""
        return [r for r in self.record["queues"][host] if self.known(r)["state"].removesuffix(" (stored)") not in (*TERMINAL, "stopped")]

    def move_lost(self, host):
        """Every run of the lost host's queue that is not done goes to the host with the fewest runs left: from its last
        stored epoch when it had started (uploaded there), as a new run when it had not. A move that fails (the other
        host, storage) is tried again next round."""
        others = [h for h in self.record["queues"] if h != host and h not in self.record["lost"]]
        if not others:
            self.say(f"{iso()}  {host} lost, and no other host of the sweep is left to take its runs: waiting for it", "yellow")
            return
        if host not in self.record["lost"]:
            self.say(f"{iso()}  {host} has not answered for {self.inv.recovery['unreachable_minutes']:g} min: lost; moving "
                     f"{', '.join(self.left_on(host)) or 'nothing'}", "bold")
            self.record["lost"][host] = iso()
        moved = []
        # The runs it had not started move first: their claims move before that of a run it trains, whose fence lets
        # its runner go on. "Started" from storage too (a busy laptop's last look may predate the start).
        left = sorted(((run, *self.started_on(run, host)) for run in self.left_on(host)), key=lambda found: found[1])
        for run, started, launch_id in left:
            to = min(others, key=lambda h: len(self.record["queues"][h]))
            if self.attempt(f"moving {run} off {host}", self.move, run, host, to, started, launch_id):
                moved.append(run)
        self.record["queues"][host] = [r for r in self.record["queues"][host] if r not in moved]
        plan.save(self.record)

    def started_on(self, run, host):
        """(whether `run` had started on `host`, its launch id there or None): from the last look at the host, or from run
        storage's pointer naming that host. A busy laptop's last look may predate the start; the pointer does not."""
        seen = self.last.get(run) or {}
        if seen.get("state") not in (None, "queued"):
            return True, seen.get("launch_id")
        pointer = stored.pointer(self.inv, run) if stored.configured(self.inv) else None
        if pointer and pointer.get("host") == host:
            return True, pointer.get("launch_id")
        return False, None

    def move(self, run, lost, to, started, launch_id):
        """`run` from the lost host to host `to`: its stored epochs uploaded there (when storage has any), then queued;
        `started`, `launch_id`: started_on's answer (a started run is fenced on the lost host when it answers again),
        asked again for a run not started then: a host cut off from the laptop may still start it meanwhile."""
        seen = self.last.get(run) or {}
        if not started:
            started, launch_id = self.started_on(run, lost)
        epoch, url, why, end = stored.latest(self.inv, run) if stored.configured(self.inv) else (None, None, "no run storage", None)
        if end is not None:  # it ended by itself (finished, failed, stopped on request): storage's word, not moved
            self.say(f"  {run}: {end.reason}")
            self.last[run] = {**seen, "state": "failed" if end.state == "failed" else end.state}
            return False
        hinv = self.inv.for_host(to)
        target = connect_host(self.config, hinv, to)
        try:
            if url and not sweep_hosts.holds_run(target.conn, hinv, run):  # (a move tried before may have uploaded it)
                local = storage.resume_source(self.inv, url, say=self.say, refresh=True)
                sync.upload_run(target, hinv, local, self.say)
            elif started:
                self.say(f"  {run}: had started on {lost} and storage cannot give it ({why}): trained from its start on {to}", "yellow")
            by_run = {r["run"]: r for r in self.record["runs"]}
            sweep_hosts.put_queue(target, hinv, self.record, [by_run[run]], lambda *a, **k: None, why=f"moved from {lost} (lost)")
            sweep_hosts.start_runner(target.conn, hinv, self.record["name"])
        finally:
            target.conn.close()
        self.record["queues"][to].append(run)
        if started and launch_id:  # fenced on the lost host when it answers again
            self.record["fences"].append({"host": lost, "run": run, "launch_id": launch_id, "reason": f"moved to {to}"})
        self.record["moves"].append({"run": run, "from": lost, "to": to, "at": iso(), "from_epoch": epoch if url else None})
        self.say(f"{iso()}  {run}: moved from {lost} to {to}" + (f", from stored epoch {epoch}" if url else ""), "bold green")
        return True

    def fence_when_back(self, host):
        """A lost host that answers again: the launches of the runs moved off it fenced, the runs taken off its queue."""
        todo = [f for f in self.record["fences"] if f["host"] == host]
        moved = [m["run"] for m in self.record["moves"] if m["from"] == host]
        if not (todo or moved) or look(self.config, self.inv, self.record["name"], host) is None:
            return
        hinv = self.inv.for_host(host)
        target = connect_host(self.config, hinv, host)
        try:
            for f in todo:
                if sweep_hosts.fence(target.conn, hinv, f["run"], f["launch_id"], f["reason"]):
                    self.record["fences"].remove(f)
            for run in moved:
                sweep_hosts.take(target.conn, hinv, self.record["name"], run)
        finally:
            target.conn.close()
        plan.save(self.record)

    # --- the end ----------------------------------------------------------------------------------

    def end(self, rows, code=0):
        """The table; the launched hosts downed once every run has ended (not after a stop: the sweep goes on later)."""
        print_table(self.console, self.record, rows, self.record.get("per_run_seconds"))
        for host in self.record["launched"] if code == 0 else []:
            if host not in self.record["lost"] and host not in self.record.get("downed", []):
                idle.down_launched(self, host)
        failed = [r["run"] for r in rows if r["state"] == "failed"]
        if failed:
            self.say(f"failed: {', '.join(failed)} (`fab -H HOST logs --run RUN` says why; a failed run is not restarted)", "red")
            return 1
        return code
