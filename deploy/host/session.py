"""One connection, one host lock and one bookkeeping command for the tasks of a `fab` invocation.

    target = reuse(connect(c, inv))          # the connection this invocation already has to that host, if any
    with task(h, "sync-code", changes_host=True, restart=False, say=say):
        ...                                  # the task's body

`fab provision sync-code sync-data` runs three tasks; they share one SSH connection and one host
lock. The first task that changes the host sends the invocation's bookkeeping command
(remote_scripts/fab_session.py): it touches the heartbeat, takes the lock for every task still
to come that changes the host, asks the host's run_state whether a training runs, and surveys what
those tasks will ask (provision's survey, the data folders' file counts, the code stamp), all in
one JSON answer. The command stays open while the lock is held: the keeper (deploy.host.agent) beats
through it (heartbeat and lock lease) and the lock is released through it once no task to come
changes the host, or at the first failure. So a no-op `fab provision sync-code sync-data` runs
nothing else on the host but its two rsyncs.

The steps find the survey's answers in `conn.answers` (each taken once; a step without one asks
the host itself). The training check holds for the next task while every task since it leaves a
training as it is (provision, sync-code, sync-data); after any other, the next task asks again.
A task that does not change the host (monitor, logs, ...) takes no lock: its first command also
touches the heartbeat (HostConnection.touch_first), then the keeper beats on a channel of its own.
"""

import atexit
import contextlib
from dataclasses import dataclass

from deploy.host import agent, lock, training
from deploy.host import provision as prov
from deploy.host.bookkeeping import Bookkeeping
from deploy.host.sync import remote_data_dirs


@dataclass(frozen=True)
class Spec:
    changes_host: bool
    survey: tuple = ()  # what its steps ask the host, answered by the bookkeeping command: "provision", "code", "data"
    leaves_training: bool = False  # it never starts nor stops a training: a training check before it still holds after it


SPECS = {}  # task name -> Spec; deploy.tasks.plumbing.host_task registers each task
UNKNOWN = object()  # no training check that still holds
_sessions = {}  # target key -> HostSession, for this process
_plan = None  # the names of this invocation's tasks still to run


def register(name, changes_host, survey=(), leaves_training=False):
    SPECS[name] = Spec(changes_host, tuple(survey), leaves_training)


def spec(name):
    """The task's Spec; a name that is not a host task (a cloud task) changes no host through a session."""
    return SPECS.get(name, Spec(False))


def _key(target):
    c = target.conn
    return target.host_name, c.user, c.host, c.port, tuple(c.connect_kwargs.get("key_filename") or ())


def reuse(target):
    """The Target this invocation already holds for the same host (its open connection), else `target`."""
    held = _sessions.get(_key(target))
    return held.target if held else target


def _planned():
    """The tasks of this `fab` invocation, in order ([] outside a `fab` run)."""
    from fabric.main import program

    return [ctx.name for ctx in getattr(program, "tasks", None) or []]


def advance(name):
    """The planned tasks after `name`, which starts now (once per task run, however many hosts it acts on)."""
    global _plan
    if _plan is None:
        _plan = _planned()
    if name in _plan:
        del _plan[:_plan.index(name) + 1]
        return list(_plan)
    return []  # a task run otherwise than from the command line: it is the last


class HostSession:
    """This invocation's connection to one host: its keeper, its bookkeeping command while it holds the lock,
    and the last training check while it holds."""

    def __init__(self, target, inv):
        self.target, self.conn = target, target.conn
        self.held = None
        self.training = UNKNOWN
        agent.touch(self.conn, inv)  # until the bookkeeping command, the first command touches the heartbeat
        self.keeper = agent.Keeper(self.conn, agent.heartbeat(inv), agent.beat_seconds())
        self.keeper.start()

    def take_lock(self, inv, tasks, say=print):
        """The bookkeeping command: the lock for `tasks`, the training check and their survey, in one round trip. A lock
        left by a `fab` of this machine that no longer runs (the host crashed under it, it was killed) is removed first."""
        survey = {part for name in tasks for part in spec(name).survey}
        holder = lock.new_holder(" ".join(t for t in tasks if spec(t).changes_host))
        request = {"heartbeat": agent.heartbeat(inv), "lock": {"dir": lock.lock_dir(inv), "holder": holder},
                   "training": training.state_request(inv), "dirs": []}
        if "provision" in survey:
            request["provision"] = prov.survey_request(inv)
        if "code" in survey:
            request["code"] = inv.remote["project_dir"]
            request["dirs"].append(inv.remote["project_dir"])
        if "data" in survey:
            request["data"] = remote_data_dirs(inv)
            request["dirs"].append(inv.remote["data_dir"])
        held = Bookkeeping(self.conn, request)
        self.conn.touch_first = None  # the bookkeeping command touched it
        answer = held.answer
        if lock.left_by_a_dead_process_here(answer["lock"]):
            say(f"The host's lock was left by {lock.describe(answer['lock'])}, which no longer runs on this machine: removing it")
            lock.unlock(self.conn, inv, token=answer["lock"].get("token"))
            held = Bookkeeping(self.conn, request)
            answer = held.answer
        lock.refuse_unless_acquired(answer["lock"], lock.lock_dir(inv))
        self.held, self.keeper.via = held, held
        made = set(answer.get("dirs") or ())
        self.conn.answers.update(made=made | set(self.conn.answers.get("made", ())))
        for part in ("provision", "code"):
            if part in answer:
                self.conn.answers[part] = answer[part]
        if "data" in answer:
            self.conn.answers["data"] = dict(zip(request["data"], map(tuple, answer["data"])))
            self.conn.answers["data_incomplete"] = {d for d, flag in zip(request["data"], answer.get("incomplete") or ()) if flag}
            self.conn.answers["data_listing"] = dict(zip(request["data"], answer.get("listing") or ()))
        self.training = answer.get("training")

    def refuse_while_training(self, inv, name, restart, say):
        """training.refuse_while_training with the check that still holds, else a new one; a check that finds
        no training holds for the tasks to come that leave a training as it is."""
        info, self.training = self.training, UNKNOWN
        if info is UNKNOWN:
            info = training.run_state(self.conn, inv, log_lines=0, quick=True, missing_ok=True)
        else:
            info = training.checked_state(info, inv)
        if not training.refuse_while_training(self.conn, inv, say, name, restart, info=info):
            self.training = info  # no training lives (none was stopped)

    def release(self):
        held, self.held = self.held, None
        self.keeper.via = None
        if held is not None:
            held.release()

    def end(self):
        self.release()
        self.keeper.stop()
        _sessions.pop(_key(self.target), None)


@contextlib.contextmanager
def task(h, name, changes_host, restart, say, to_come=None):
    """The task `name` on `h`: for a task that changes the host, the lock (taken by the invocation's
    bookkeeping command, or already held) and the refusal to work under a training (--restart stops
    it first). The lock goes at the end of the last task that changes the host, or at a failure.
    `to_come`: advance(name), when the caller acts on several hosts (a cluster)."""
    session = _sessions.get(_key(h.target))
    if session is None:
        session = _sessions[_key(h.target)] = HostSession(h.target, h.inv)
    to_come = advance(name) if to_come is None else to_come
    ok = False
    try:
        if changes_host:
            if session.held is None:
                session.take_lock(h.inv, [name, *to_come], say)
            session.refuse_while_training(h.inv, name, restart, say)
        yield
        ok = True
    finally:
        if not spec(name).leaves_training:
            session.training = UNKNOWN
        if not ok or not to_come:
            session.end()
        elif not any(spec(t).changes_host for t in to_come):
            session.release()


def end_all():
    """Release every lock this process holds and stop its keepers (a failure before a task began, or the exit)."""
    for session in list(_sessions.values()):
        with contextlib.suppress(Exception):
            session.end()


atexit.register(end_all)

