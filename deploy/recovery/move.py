"""`fab watch` moves a lost run: from storage (or a host's own copy) to the next host that takes it.

    code = recover(watch, decision, seen)   # None when the run runs on a new host, else the watch's exit code
    ok = run_fab(watch, "gpu2", "train", "--resume")   # one `fab` task as a process of its own

Each function takes the Watch (deploy/recovery/watch.py) as its first argument: the run, its record, the
inventory, the host it is on and the way to tell the user. A recovery, step by step:

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
"""

import subprocess
import sys
import time
from pathlib import Path

from deploy.errors import DeployError
from deploy.inventory import load_inventory
from deploy.recovery import hosts as recovery_hosts
from deploy.recovery import machine, stored
from deploy.recovery.look import look
from deploy.recovery.record import iso, write_on_host
from trainer.results.visible import visible

UPLOADER_WAIT_SECONDS = 150  # a spot notice gives two minutes; the host agent waits for the upload within them


def recover(watch, decision, seen):
    """Move the run (see the module docstring); None when it runs on a new host, else the exit code."""
    n = watch.record.data["restarts"] + 1
    lost_host, reachable = watch.host, seen["reachable"]
    if reachable and stored.uploader_busy(seen["info"]):  # e.g. after a spot notice: its last epoch is on its way
        watch.say(f"waiting (at most {UPLOADER_WAIT_SECONDS} s) for the uploader on {lost_host} to store the run's end ...")
        hinv = watch.inv.for_host(lost_host)
        stored.wait_uploader(lambda: look(watch.target, hinv, watch.run)["info"], UPLOADER_WAIT_SECONDS)
    epoch, url, why, end = stored.latest(watch.inv, watch.run, watch.record.data.get("run_started_at"))
    if end is not None:  # the host could not tell, storage can: the run ended by itself (failed, stopped, finished)
        watch.record.transition(end.state, end.reason)
        return watch.end(end, {"reachable": False})
    if not (reachable and (seen["info"] or {}).get("state") == "preempted"):  # a spot notice: the host agent tells
        watch.sender.send(f"lost:{n}", "preempted", f"preempted: run {watch.run}: {decision.reason}; moving it (recovery {n})",
                          run=watch.run, host=lost_host, reason=decision.reason)
    watch.say(f"recovering run {watch.run} (recovery {n} of at most {watch.inv.recovery['max_restarts']}): "
              + (f"from epoch {epoch} in storage ({url})" if url else f"storage cannot give it ({why}); only a host that holds it "
                                                                       "can take it"), "bold")
    watch.record.transition("recovering", f"recovery {n}: {decision.reason}")
    # a host that answers and lost the run's processes (vanished) keeps its disk: its copy, newer than storage's by the
    # epoch in flight, is tried first (not after a spot notice or a shutdown: that host is going away)
    first = reachable and (seen["info"] or {}).get("state") in ("vanished", "none")
    new_host, launched_one, epoch = place(watch, url, epoch, lost_host, n, lost_first=first)
    if new_host is None:
        reason = (f"{decision.reason}; no host could take it (recovery.hosts, the lost host"
                  + (", then a launched one" if watch.inv.recovery["launch"]["type"] and url else "")
                  + ")" + ("" if url else f"; storage: {why}"))
        return retry_later(watch, reason)
    entry = {"n": n, "host": new_host, "from_host": lost_host, "at": iso(), "from_epoch": epoch, "reason": decision.reason,
             "launched": launched_one}
    old_launch = watch.record.data.get("launch_id")
    if old_launch and new_host != lost_host:  # the launch left behind may still live (a network fault): fenced when it answers
        watch.record.data.setdefault("fences", []).append({"host": lost_host, "launch_id": old_launch, "since": iso(),
                                                          "reason": f"run {watch.run} moved to {new_host} (recovery {n}: {decision.reason})"})
    watch.record.add_recovery(entry)
    watch.move_to(new_host)
    recoveries = watch.record.data["recoveries"]
    if not write_on_host(watch.target.conn, watch.inv.for_host(new_host), watch.run, recoveries):
        watch.say(f"could not write recoveries.json in the run on {new_host}; the watch's record keeps them", "yellow")
    watch.sender.send(f"recovered:{n}", "recovered", f"recovered: run {watch.run} on {new_host} from epoch {epoch} "
                      f"(was on {lost_host}: {decision.reason})", run=watch.run, host=new_host, epoch=epoch, from_host=lost_host,
                      recovery=n)
    watch.record.transition("following", f"recovered on {new_host} from epoch {epoch}")
    watch.say(f"{iso()}  recovered: run {watch.run} on {new_host} from epoch {epoch}", "bold green")
    if watch.inv.recovery["launch"]["type"] and lost_host != new_host:
        watch.say(recovery_hosts.down_lost(watch.config, watch.inv, lost_host, watch.run, reachable, watch.say))
    return None


def place(watch, url, epoch, lost_host, n, lost_first=False):
    """Continue the run on the first host that takes it: one that holds it as its current run (the lost host, back)
    with `train --resume`, any other from storage (`url`); (host name, launched?, from epoch) or (None, False, None)."""
    names = recovery_hosts.candidates(watch.inv, lost_host)
    if lost_first:
        names = [lost_host] + [name for name in names if name != lost_host]
    for name in names:
        free, why, held = recovery_hosts.is_free(watch.config, watch.inv, name, watch.run)
        if not free:
            watch.say(f"  {name}: {why}", "yellow")
        elif held is not None and not machine.resume_in_place(held, epoch):  # deploy-full would refuse it: it holds the run
            watch.say(f"  {name}: holds the run at epoch {held}, older than storage's epoch {epoch}: not continued from there", "yellow")
        elif held is not None:  # its own copy, as it was when the run stopped there (as new as storage's, or no storage)
            if run_fab(watch, name, "train", "--resume"):
                return name, False, held
        elif url is None:
            watch.say(f"  {name}: does not hold the run, and storage cannot give it", "yellow")
        elif run_fab(watch, name, "deploy-full", "--resume-from", url):
            return name, False, first_known(stored.resumed_epoch(watch.run), epoch)
    if watch.inv.recovery["launch"]["type"] and url:
        try:
            name = recovery_hosts.launch_replacement(watch.inv, watch.config, watch.run, n, watch.say)
        except DeployError as e:
            watch.say(f"  launching a replacement failed: {e}", "red")
            return None, False, None
        watch.inv = load_inventory(watch.inv.path)  # a launched host is an inventory host from now on
        if run_fab(watch, name, "deploy-full", "--resume-from", url):
            return name, True, first_known(stored.resumed_epoch(watch.run), epoch)
    return None, False, None


def run_fab(watch, name, *task):
    """`fab -H NAME TASK...` as a process of its own (its lock, its output shown indented); True on exit 0."""
    command = [fab_program(), "-H", name, *task]
    watch.say(f"  {name}: {' '.join(command[1:])}", "bold")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    for line in proc.stdout:
        watch.say(f"  | {visible(line.rstrip())}", "dim")
    code = proc.wait()
    if code != 0:
        watch.say(f"  {name}: {' '.join(task[:1])} exited {code}: trying the next host", "yellow")
        watch.record.transition("recovering", f"{' '.join(task)} on {name} exited {code}")
    return code == 0


def retry_later(watch, reason):
    """No host took the run: None after a backoff (the next round looks at the lost host again and retries the
    placement), or the exit code once recovery.give_up_minutes have passed since the first failed placement."""
    now, d = time.time(), watch.record.data
    if not d.get("placing_since"):
        d.update(placing_since=now, placing_tries=0)
    d["placing_tries"] = d.get("placing_tries", 0) + 1
    watch.record.save()
    give_up = watch.inv.recovery["give_up_minutes"] * 60
    if now - d["placing_since"] >= give_up:
        return watch.give_up(f"{reason}; tried {d['placing_tries']} time(s) for {(now - d['placing_since']) / 60:.1f} min "
                             f"(recovery.give_up_minutes: {watch.inv.recovery['give_up_minutes']:g})")
    pause = min(300.0, float(watch.inv.recovery["poll_seconds"]) * 2 ** min(d["placing_tries"], 8), give_up - (now - d["placing_since"]))
    watch.record.transition("placing", f"{reason}; trying again in {pause:.0f} s (until {iso(d['placing_since'] + give_up)})")
    watch.say(f"{iso()}  no host could take run {watch.run}: trying again in {pause:.0f} s, until "
              f"{iso(d['placing_since'] + give_up)} (recovery.give_up_minutes)", "yellow")
    watch.sleep(max(pause, 0.0))
    return None


def first_known(*values):
    return next((v for v in values if v is not None), None)


def fab_program():
    beside = Path(sys.executable).parent / "fab"
    return str(beside) if beside.exists() else "fab"
