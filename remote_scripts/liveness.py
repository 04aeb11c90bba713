"""Is a run alive? Its launch's process group, from /proc: standard library only (run_state.py's helper).

    live_processes(launch)      # PIDs of the live processes of the group recorded in launch.json
    describe_processes(pids)    # [{pid, command}] for the monitor and the refusals
    proc_stat(pid)              # (state, process group, start time in clock ticks since boot) or None

A run is alive while a process of its group lives. The group is the launch's only if its leader,
when it still exists, started when launch.json says (field 22 of /proc/PID/stat) and the host has
not rebooted since (the boot id), so a reused PID is never taken for the run. Like supervisord and
systemd, this asks the kernel, not a proxy such as a terminal session.
"""

import os


def proc_stat(pid):
    """(state, process group, start time in clock ticks since boot) of process `pid`, from
    /proc/PID/stat (fields 3, 5 and 22), or None when there is no such process."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
        return fields[0], int(fields[2]), int(fields[19])
    except (OSError, ValueError, TypeError, IndexError):
        return None


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def group_members(pgid, leader_start=None, boot=None):
    """PIDs of the live processes in process group `pgid` (from /proc; zombies do not count).
    With the group leader's recorded start time (and the boot id it was recorded under), a group
    that is not that one, its number reused after a reboot or after every process of it ended,
    has no members. (Linux never reuses a number while a process of the group lives.)"""
    if boot and boot_id() not in (None, boot):
        return []
    leader = proc_stat(pgid)
    if leader_start is not None and leader is not None and leader[2] != leader_start:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = proc_stat(entry)
        if stat and stat[1] == pgid and stat[0] != "Z":
            found.append(int(entry))
    return found


def live_processes(launch):
    """PIDs of the live processes of the launch recorded in `launch` (launch.json), [] when none."""
    pgid = launch.get("pgid")
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid <= 1:
        return []
    return group_members(pgid, launch.get("leader_start"), launch.get("boot_id"))


def describe_processes(pids):
    """[{pid, command}] for the monitor and the refusals: which processes of the run live."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            command = ""
        found.append({"pid": pid, "command": command[:300]})
    return found
