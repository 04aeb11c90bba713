"""The CPU each test costs, its children included, and a report of the costliest at the end of the run.

A test's CPU is what this pytest process and the processes it belongs to used while the test ran, setup and
teardown included (a session fixture's cost goes to the first test that asks for it):
- this process and its descendants, read exactly (getrusage, and /proc for the live descendants: a descendant's
  reaped children are in its cumulative times);
- the processes outside that tree that work for this process: a local "host"'s trainer runs in the user's one
  tmux server, and daemons (host agents, uploaders) are orphaned to init. They are the ones whose command line,
  or an ancestor's, names this process's temp folder (each xdist worker has its own). They are sampled every
  SAMPLE_SECONDS: one that lives shorter is missed, and a longer one's last fraction of a second.
Under pytest-xdist each worker measures its own tests and sends the figure with the test's teardown report
(user_properties); the report is printed by the process that prints the summary.
"""

import os
import re
import resource
import threading
import time

import pytest

SAMPLE_SECONDS = 0.5
SHOWN = 15
KEY = "cpu_seconds"
TICKS = os.sysconf("SC_CLK_TCK")


def _processes():
    """{pid: (ppid, own ticks, cumulative children ticks, start time, comm)} of every process /proc shows."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2:].split()
            comm = data[data.index(b"(") + 1:data.rindex(b")")]
            found[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), fields[19], comm)
        except (OSError, ValueError, IndexError):
            continue
    return found


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class Meter:
    """This process's CPU, children and helpers included, as a running total of seconds (`total`)."""

    def __init__(self, marker):
        # a path that the command line of a process working for us names, whole: .../popen-gw1 is not .../popen-gw10
        self.marker = re.compile(re.escape(os.fsencode(marker).rstrip(b"/")) + rb"(?![A-Za-z0-9_.-])")
        self.me = os.getpid()
        self.lock = threading.Lock()
        self.total = 0.0
        self._tree = None  # the last reading of this process's tree, in seconds
        self._in_tree = {}  # (pid, start) -> (own ticks, cumulative children ticks) at the last sample, for the tree
        self._adopted = set()  # (pid, start) of the descendants orphaned to init: ours whatever they name
        self._outside = {}  # (pid, start) -> own ticks at the last sample, for the processes outside the tree
        self._ours = {}  # (pid, start) -> whether it works for us (read once per process)
        self._stop = threading.Event()
        self._first = True  # the first sample only reads where the processes already running stand
        self.sample()
        threading.Thread(target=self._run, name="cpu-report", daemon=True).start()

    def _run(self):
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def stop(self):
        self._stop.set()

    def sample(self):
        with self.lock:
            usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            procs = _processes()
            children = {}
            for pid, (ppid, *_) in procs.items():
                children.setdefault(ppid, []).append(pid)
            tree, todo = set(), list(children.get(self.me, ()))
            while todo:
                pid = todo.pop()
                tree.add(pid)
                todo += children.get(pid, ())
            ticks = sum(procs[pid][1] + procs[pid][2] for pid in tree)
            tree_now = sum(u.ru_utime + u.ru_stime for u in usage) + ticks / TICKS
            # a descendant orphaned to init since (a daemon's launcher exited) leaves the tree with the time it had used
            # in it: that time stays counted, and from here it is counted as a process outside the tree
            left = {key: value for key, value in self._in_tree.items()
                    if key[0] in procs and procs[key[0]][3] == key[1] and key[0] not in tree}
            if self._tree is not None:
                # what stays lost: a descendant that was orphaned and ended between two samples
                self.total += max(0.0, tree_now + sum(own + kids for own, kids in left.values()) / TICKS - self._tree)
            self._tree = tree_now
            self._in_tree = {(pid, procs[pid][3]): (procs[pid][1], procs[pid][2]) for pid in tree}
            self._adopted = {key for key in self._adopted | set(left) if key[0] in procs and procs[key[0]][3] == key[1]}
            outside = {}
            for pid, (_, own, _, start, _) in procs.items():
                if pid in tree or pid == self.me:
                    continue
                key = (pid, start)
                if key in self._adopted or self._works_for_us(pid, procs):
                    # one seen before: since then; one that left the tree: since its last sample there; one that
                    # started since: all of it (at the first sample: only where the running ones stand)
                    before = self._outside.get(key, left[key][0] if key in left else own if self._first else 0)
                    self.total += max(0, own - before) / TICKS
                    outside[key] = own
            self._outside, self._first = outside, False
            self._ours = {key: value for key, value in self._ours.items() if key[0] in procs}

    def _works_for_us(self, pid, procs):
        chain, steps = pid, 0
        while chain > 1 and chain in procs and steps < 32:
            if procs[chain][4].startswith(b"tmux"):  # the user's one tmux server: every worker's sessions are below it
                return False
            key = (chain, procs[chain][3])
            if key not in self._ours:
                self._ours[key] = self.marker.search(_cmdline(chain)) is not None
            if self._ours[key]:
                return True
            chain, steps = procs[chain][0], steps + 1
        return False


_meter_key = pytest.StashKey[Meter]()
_start_key = pytest.StashKey[float]()
_wall_key = pytest.StashKey[float]()


def pytest_configure(config):
    config.stash[_wall_key] = time.monotonic()


@pytest.fixture(scope="session", autouse=True)
def _cpu_meter(request, tmp_path_factory):
    """One meter per process that runs tests, marking as ours the processes that name its temp folder."""
    meter = Meter(str(tmp_path_factory.getbasetemp()))
    request.config.stash[_meter_key] = meter
    yield meter
    meter.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    meter = item.config.stash.get(_meter_key, None)
    if meter:
        meter.sample()
    item.stash[_start_key] = meter.total if meter else 0.0  # the first test: from the meter's start
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        meter = item.config.stash.get(_meter_key, None)
        if meter:
            meter.sample()
            item.user_properties.append((KEY, round(meter.total - item.stash.get(_start_key, 0.0), 2)))


def pytest_terminal_summary(terminalreporter, config):
    costs = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == KEY and getattr(report, "when", None) == "teardown":
                    costs[report.nodeid] = value
    if not costs:
        return
    wall = time.monotonic() - config.stash[_wall_key]
    total = sum(costs.values())
    terminalreporter.section(f"CPU: {total:.0f} CPU-s in {len(costs)} tests, {wall:.0f} s of wall time; the costliest")
    tiers = {}
    for nodeid, value in costs.items():
        parts = nodeid.split("/")
        tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"
        count, cpu = tiers.get(tier, (0, 0.0))
        tiers[tier] = (count + 1, cpu + value)
    terminalreporter.write_line("by folder: " + ", ".join(f"{tier} {cpu:.0f} CPU-s ({count} tests)"
                                                         for tier, (count, cpu) in sorted(tiers.items(), key=lambda kv: -kv[1][1])))
    for nodeid, value in sorted(costs.items(), key=lambda kv: -kv[1])[:SHOWN]:
        terminalreporter.write_line(f"{value:8.1f} CPU-s  {value / total:5.1%}  {nodeid}")
