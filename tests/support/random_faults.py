"""Faults at seeded random times into a watched, stored run on two local SSH hosts (issue "Every fault, at random").

    report = run_scenario(seed=3, workdir=tmp, moto_url=url, host_venv=venv, faults=3, epochs=24)
    report.problems()        # [] when the product held: at most one trainer at any sample, every epoch once in the
                             # run's history, one `finished`, storage's pointer final and finished, no manual step
    report.row()             # one line of bench/random_faults.py's table (billed trainer time against useful time)

The set-up is a user's: hosts a and b (a real sshd each, folders and a tmux server of their own), run storage on
moto's S3 reached through a proxy that can stop answering, a webhook, `recovery: {hosts: [b]}`, `fab deploy-full`
on a and `fab watch` on the laptop. Then `faults` faults, one at a time, each at a random moment after the run
has gone on (at least one more epoch stored since the last), of a kind drawn from KINDS; the only thing done
besides the faults is what a supervisor does: a killed `fab watch` is started again. A sampler looks every
SAMPLE_SECONDS at every host: the trainers alive (their processes), each launch's epoch (status.json).
"""

import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("kill-trainer", "stop-trainer", "kill-uploader", "stop-uploader", "kill-agent", "stop-agent", "kill-watch", "stop-watch",
         "crash-host", "kill-tmux", "sshd-down", "s3-down", "terminate")
SAMPLE_SECONDS = 0.25
UNREACHABLE_MINUTES = 0.2


class Proxy:
    """A TCP proxy to moto on 127.0.0.1 that can stop answering for a while (`hold(seconds)`): connections are
    accepted, nothing is passed on until the hold ends (as an S3 endpoint that does not answer)."""

    def __init__(self, target):
        host, port = target.split("//")[1].split(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held_until = 0.0
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def hold(self, seconds):
        self.held_until = time.monotonic() + seconds

    def accept(self):
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while time.monotonic() < self.held_until:
                    time.sleep(0.1)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self):
        self.closed = True
        self.server.close()


@dataclass
class Report:
    seed: int
    faults: list = field(default_factory=list)  # (at seconds, kind, host, detail)
    max_trainers: int = 0
    twice: dict = field(default_factory=dict)  # epoch -> launches that completed it
    history: list = field(default_factory=list)
    finished_posts: int = 0
    pointer: dict = field(default_factory=dict)
    watch_codes: list = field(default_factory=list)
    watch_restarts: int = 0
    billed_seconds: float = 0.0
    useful_seconds: float = 0.0
    epochs: int = 0
    terminated: int = 0
    seconds: float = 0.0
    error: str = ""
    watch_tail: str = ""
    watch_text: str = ""

    def problems(self):
        found = []
        if self.error:
            found.append(self.error)
        if self.max_trainers > 1:
            found.append(f"{self.max_trainers} trainers of the run alive at once")
        if [e for e, _ in self.history] != list(range(self.epochs)):
            found.append(f"the run's history is not every epoch once: {[e for e, _ in self.history]}")
        if len(self.twice) > self.terminated:  # a terminated host takes the epoch it had not stored yet with its disk
            found.append(f"epochs trained by two launches: {sorted(self.twice)} ({self.terminated} host(s) terminated)")
        if self.finished_posts != 1:
            found.append(f"{self.finished_posts} `finished` notifications")
        if self.pointer.get("state") != "finished" or not self.pointer.get("final"):
            found.append(f"storage's pointer is {self.pointer.get('state')} (final: {self.pointer.get('final')})")
        if not self.watch_codes or self.watch_codes[-1] != 0:
            found.append(f"`fab watch` exited {self.watch_codes}")
        return found

    def row(self):
        kinds = ", ".join(f"{kind}@{at:.0f}s" for at, kind, _, _ in self.faults)
        return (f"{self.seed:>4}  {'ok' if not self.problems() else 'FAILED':<6}  {self.max_trainers:>3}  {len(self.twice):>5}  "
                f"{self.billed_seconds:>6.0f}  {self.useful_seconds:>6.0f}  {self.seconds:>5.0f}  {kinds}")


def trainers(roots, run):
    """{pid: host} of the run's live trainer processes (`python -m trainer ...` naming the run), stopped ones included."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0") if w]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z" or "-m" not in words or "trainer" not in words or not any(w == run or w.endswith(f"/{run}") for w in words):
            continue
        text = " ".join(words)
        for host, root in roots.items():
            if str(root) in text:
                found[int(entry.name)] = host
    return found


def kill_sshd(pid):
    """SIGKILL the sshd listener `pid` and every sshd process below it (one per connection): the host's network gone.
    Their other children (a command's shell) are left alone: a SIGKILL there could leave a lock behind (the shell's
    rc files may run `pyenv rehash`, which holds a lock file while it works)."""
    children, comm = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            comm[int(entry.name)] = (entry / "comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        if comm.get(p, "sshd").startswith("sshd"):
            found.append(p)
            todo += children.get(p, [])
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def epoch_ends(log_text):
    """(launch id, epoch) of every epoch a train.log says ended ("Epoch 5/24 - ..." lines, after the launcher's
    "[launch] ... (launch ID)" line of the launch that trained it)."""
    import re

    launch, found = None, []
    for line in log_text.splitlines():
        started = re.search(r"^\[launch\] .*\(launch ([0-9TZ-]+)\)$", line)
        if started:
            launch = started.group(1)
        ended = re.match(r"^Epoch (\d+)/\d+ - ", line)
        if ended and launch:
            found.append((launch, int(ended.group(1))))
    return found


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class Scenario:
    def __init__(self, seed, workdir, moto_url, host_venv, faults, epochs, webhook, log=print, clips=400):
        from deploy.demo.localhost import LocalSSHHost
        from tests.support.deploy_env import DeployEnv
        from tests.support.helpers import TINY_CONFIG, write_config
        from tests.support.storage_check import new_bucket
        from trainer.data.synth import write_corpus

        self.rng, self.log, self.run = random.Random(seed), log, "faults"
        self.report = Report(seed=seed, epochs=epochs)
        self.fault_count, self.webhook, self.moto_url = faults, webhook, moto_url
        workdir = Path(workdir)
        self.root = workdir / "laptop"
        self.root.mkdir(parents=True)
        self.proxy = Proxy(moto_url)
        self.sshd, self.tmux, self.hosts = {}, {}, {}
        for name in ("a", "b"):
            self.tmux[name] = workdir / f"tmux-{name}"  # a tmux server of its own: one host's server killed is not the other's
            self.tmux[name].mkdir()
            self.sshd[name] = LocalSSHHost(workdir / f"sshd-{name}", env={"TMUX_TMPDIR": self.tmux[name]}).start()
        self.env = DeployEnv(self.root, self.sshd["a"], host_venv)
        self.bucket = new_bucket(moto_url)
        # epochs of a second or two here (a tiny model, 400 clips of up to 100 frames): faults land inside them
        tiny = lambda n: {**TINY_CONFIG, "data": {"max_frames": 100}, "model": {"units": 32, "head_units": 16},  # noqa: E731
                          "train": {**TINY_CONFIG["train"], "epochs": n}}
        hosts = {}
        for name, sshd in self.sshd.items():
            self.hosts[name] = self.root / f"host {name}"
            hosts[name] = {**sshd.host_entry(), "remote": {"project_dir": str(self.hosts[name] / "project"),
                                                          "data_dir": str(self.hosts[name] / "data"),
                                                          "runs_dir": str(self.hosts[name] / "runs")}}
        self.env.write(hosts=hosts, default_host="a", train_config=str(write_config(workdir / "train.yaml", **tiny(epochs))),
                       smoke_config=str(write_config(workdir / "smoke.yaml", **tiny(1))),
                       storage={"url": f"s3://{self.bucket}/runs", "endpoint_url": self.proxy.url, "region": "us-east-1",
                                "credentials": "laptop"},
                       notify={"webhook": webhook.url},
                       recovery={"hosts": ["b"], "unreachable_minutes": UNREACHABLE_MINUTES, "poll_seconds": 1, "max_restarts": 8,
                                 "give_up_minutes": 5, "max_restarts_on_kill": 8})
        write_corpus(self.env.data, "crema-d", clips=clips, seed=5)
        self.terminated = set()
        self.samples = []  # (time, {pid: host}, {(host, launch_id): epoch})
        self.logs = {}  # host -> the run's train.log as last read (a terminated host's is gone with its disk)
        self.epoch_seconds = []  # status.json's last_epoch_seconds as sampled (useful time: epochs x their median)
        self.watch, self.watch_out, self.stop_sampling = None, [], threading.Event()
        self.t0 = time.monotonic()

    # --- observing --------------------------------------------------------------------------

    def sample(self):
        while not self.stop_sampling.is_set():
            alive = trainers(self.hosts, self.run)
            epochs = {}
            for name, root in self.hosts.items():
                run_dir = root / "runs" / self.run
                launch = (read_json(run_dir / "launch.json") or {}).get("launch_id")
                status = read_json(run_dir / "status.json") or {}
                epoch = status.get("epoch")
                if isinstance(status.get("last_epoch_seconds"), (int, float)):  # one epoch's own time (its start-up left out)
                    self.epoch_seconds.append(status["last_epoch_seconds"])
                if launch and isinstance(epoch, int):
                    epochs[(name, launch)] = epoch
                with contextlib.suppress(OSError):
                    self.logs[name] = (run_dir / "train.log").read_text(errors="replace")
            self.samples.append((time.monotonic(), alive, epochs))
            self.stop_sampling.wait(SAMPLE_SECONDS)

    def current_host(self):
        """The host whose trainer of the run lives now (else the last one seen)."""
        for _, alive, _ in reversed(self.samples[-40:]):
            if alive:
                return sorted(set(alive.values()))[-1]
        return "b" if "a" in self.terminated else "a"

    def watched_host(self):
        """The host the watch last followed the run on (its record, state/watch/RUN.json), or None. Once the run ended
        no trainer lives to sample, and a host that crashed and came back still holds the run's older folder."""
        try:
            return json.loads((self.root / "state" / "watch" / f"{self.run}.json").read_text()).get("host")
        except (OSError, ValueError):
            return None

    def stored_epoch(self):
        from tests.support.storage_check import stored_pointer

        return stored_pointer(self.moto_url, self.bucket, self.run) or {}

    # --- the watch, as a supervisor keeps it ------------------------------------------------------

    def start_watch(self):
        self.watch = self.env.popen("watch", "--run", self.run)
        out = []
        self.watch_out.append(out)
        threading.Thread(target=lambda p=self.watch: out.extend(p.stdout), daemon=True).start()

    def watch_alive(self):
        if self.watch.poll() is None:
            return True
        self.report.watch_codes.append(self.watch.returncode)
        return False

    # --- faults -------------------------------------------------------------------------------

    def pid_of(self, host, what):
        run_dir = self.hosts[host] / "runs" / self.run
        if what == "trainer":
            pids = [pid for pid, h in trainers(self.hosts, self.run).items() if h == host]
            return pids[0] if pids else None
        if what == "uploader":
            pid = (read_json(run_dir / "storage.json") or {}).get("pid")
        else:
            pid = (read_json(self.hosts[host] / "runs" / ".agent" / "state.json") or {}).get("pid")
        return pid if isinstance(pid, int) and Path(f"/proc/{pid}").exists() else None

    def pause(self, pid, seconds):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def inject(self, kind):
        from deploy.demo.localhost import end_host_processes

        host = self.current_host()
        seconds = round(self.rng.uniform(5, 20), 1)
        detail = ""
        if kind in ("kill-trainer", "stop-trainer", "kill-uploader", "stop-uploader", "kill-agent", "stop-agent"):
            pid = self.pid_of(host, kind.split("-")[1])
            if pid is None:
                return False
            if kind.startswith("kill"):
                os.kill(pid, signal.SIGKILL)
            else:
                self.pause(pid, seconds)
                detail = f"{seconds} s"
        elif kind == "kill-watch":
            self.watch.kill()
            self.watch.wait()
            self.report.watch_restarts += 1
            self.start_watch()  # the supervisor's part, not a person's
        elif kind == "stop-watch":
            self.pause(self.watch.pid, seconds)
            detail = f"{seconds} s"
        elif kind == "crash-host":  # every process of the host's user ended at once, then it boots again (its disk kept)
            kill_sshd(self.sshd[host].proc.pid)
            self.sshd[host].stop()
            subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(self.tmux[host])}, capture_output=True)
            end_host_processes(self.hosts[host], timeout=0)
            time.sleep(seconds)
            self.sshd[host].start()
            detail = f"down {seconds} s"
        elif kind == "kill-tmux":
            subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(self.tmux[host])}, capture_output=True)
        elif kind == "sshd-down":  # longer than unreachable_minutes, then back
            seconds = round(UNREACHABLE_MINUTES * 60 + self.rng.uniform(3, 25), 1)
            kill_sshd(self.sshd[host].proc.pid)
            self.sshd[host].stop()
            time.sleep(seconds)
            self.sshd[host].start()
            detail = f"{seconds} s"
        elif kind == "s3-down":
            seconds = round(self.rng.uniform(10, 40), 1)
            self.proxy.hold(seconds)
            time.sleep(seconds)
            detail = f"{seconds} s"
        elif kind == "terminate":
            if host != "a" or "a" in self.terminated:  # b is the only other host: it is never left without one
                return False
            kill_sshd(self.sshd[host].proc.pid)
            self.sshd[host].stop()
            subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(self.tmux[host])}, capture_output=True)
            end_host_processes(self.hosts[host], timeout=0)
            self.terminated.add(host)
            self.report.terminated += 1
            import shutil

            shutil.rmtree(self.hosts[host] / "runs", ignore_errors=True)
        self.report.faults.append((time.monotonic() - self.t0, kind, host, detail))
        self.log(f"[faults {self.report.seed}] {time.monotonic() - self.t0:6.1f}s {kind} on {host} {detail}")
        return True

    def progressed(self, since_epoch, timeout):
        """Storage holds an epoch after `since_epoch` (the run went on), or the run ended; False after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pointer = self.stored_epoch()
            if (pointer.get("epoch") or 0) > since_epoch or pointer.get("final"):
                return True
            if not self.watch_alive():
                if self.report.watch_codes[-1] != 0:
                    return False
                return True
            time.sleep(0.5)
        return False

    # --- the scenario ---------------------------------------------------------------------------

    def play(self, timeout=900):
        env = self.env
        deploy = env.fab("-H", "a", "deploy-full", "--run-name", self.run, timeout=600)
        if deploy.returncode != 0:
            self.report.error = f"deploy-full exited {deploy.returncode}: {deploy.out[-1500:]}"
            return self.report
        threading.Thread(target=self.sample, daemon=True).start()
        self.start_watch()
        deadline = time.monotonic() + timeout
        left = self.fault_count
        while left and time.monotonic() < deadline:
            since = self.stored_epoch().get("epoch") or 0
            if not self.progressed(since, 240) or self.stored_epoch().get("final"):
                break
            time.sleep(self.rng.uniform(0, 4))  # a random moment within the next epoch or two
            kind = self.rng.choice(KINDS)
            if self.inject(kind):
                left -= 1
        while time.monotonic() < deadline:
            if not self.watch_alive():
                break
            time.sleep(1)
        else:
            self.report.error = "the watch did not end within the scenario's time"
            self.watch.kill()
            self.watch.wait()
            self.report.watch_codes.append(self.watch.returncode)
        time.sleep(3)  # the agents' last rounds (a second `finished` would come now)
        self.stop_sampling.set()
        self.finish()
        return self.report

    def finish(self):
        r = self.report
        r.seconds = time.monotonic() - self.t0
        r.max_trainers = max((len(alive) for _, alive, _ in self.samples), default=0)
        by_epoch = {}
        for text in self.logs.values():
            for launch, epoch in epoch_ends(text):
                by_epoch.setdefault(epoch, set()).add(launch)  # a run moved from storage carries its old launches' lines
        r.twice = {e: sorted(launches) for e, launches in by_epoch.items() if len(launches) > 1}
        for a, b in zip(self.samples, self.samples[1:]):
            r.billed_seconds += len(a[1]) * (b[0] - a[0])
        r.pointer = self.stored_epoch()
        host = self.watched_host() or ("b" if "a" in self.terminated else self.current_host())
        run_dir = self.hosts[host] / "runs" / self.run
        if not (run_dir / "history.csv").exists():
            run_dir = self.hosts["a" if host == "b" else "b"] / "runs" / self.run
        try:
            import csv

            with open(run_dir / "history.csv") as f:
                r.history = [(int(row["epoch"]), float(row["val_uar"])) for row in csv.DictReader(f)]
        except OSError:
            r.history = []
        r.useful_seconds = statistics.median(self.epoch_seconds) * r.epochs if self.epoch_seconds else 0.0
        r.finished_posts = sum(1 for p in self.webhook.posts if p.get("event") == "finished" and p.get("run") == self.run)
        r.watch_tail = "".join(self.watch_out[-1][-60:]) if self.watch_out else ""
        r.watch_text = "".join("".join(out) for out in self.watch_out)

    def close(self):
        self.stop_sampling.set()
        if self.watch is not None and self.watch.poll() is None:
            self.watch.kill()
            self.watch.wait()
        self.env.cleanup()
        for name, sshd in self.sshd.items():
            sshd.stop()
            subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(self.tmux[name])}, capture_output=True)
        self.proxy.close()


def run_scenario(seed, workdir, moto_url, host_venv, webhook, faults=3, epochs=24, log=print):
    scenario = Scenario(seed, workdir, moto_url, host_venv, faults, epochs, webhook, log=log)
    try:
        return scenario.play()
    finally:
        scenario.close()
