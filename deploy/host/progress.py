"""One line for a long step (pip installing TensorFlow): its elapsed time and what it is at, while its full
output goes to a log file that a failure names. Standard library only: the Makefile runs it before .venv exists.

    with Progress("installing CPU requirements", log_path, say) as progress:       # deploy.host.provision
        out = conn.run(cmd, hide=False, out_stream=progress, err_stream=progress, warn=True, in_stream=False)
    python3 deploy/host/progress.py LOG "installing the Python packages" -- CMD...   # the Makefile

On a terminal the line is rewritten every second ("installing CPU requirements ... 41 s (downloading
tensorflow-2.20.0-...whl)"); elsewhere (a CI log) a line is printed every EVERY_SECONDS. With
FACENET_VERBOSE=1 (`--verbose` of provision and deploy-full) the output is shown as it comes instead.
The phase is read from pip's output for display only; nothing decides on it.
"""

import os
import re
import shutil
import subprocess
import sys
import threading
import time

EVERY_SECONDS = 30.0
PHASES = ((re.compile(r"\s*Collecting (\S+)"), "collecting {}"),
          (re.compile(r"\s*Downloading (\S+)"), "downloading {}"),
          (re.compile(r"\s*Building wheels? for (\S+)"), "building {}"),
          (re.compile(r"\s*Installing collected packages"), "installing the collected packages"),
          (re.compile(r"\s*Successfully installed"), "installed"))


def verbose():
    return os.environ.get("FACENET_VERBOSE", "") not in ("", "0")


def phase_of(line):
    """What a line of pip's output says it is at, or None."""
    for pattern, text in PHASES:
        found = pattern.match(line)
        if found:
            return text.format(*(g.rsplit("/", 1)[-1] for g in found.groups()))
    return None


class Progress:
    """A file-like sink for a step's output (out_stream/err_stream), showing one progress line. Several at once (the
    hosts of a cluster, each in its thread) print lines instead of rewriting one."""

    active, active_lock = 0, threading.Lock()

    def __init__(self, title, log_path, say=None, every=EVERY_SECONDS, tty=None, show_all=None):
        self.title, self.log_path, self.every = title, str(log_path), every
        self.say = say or (lambda line, style=None: print(line, flush=True))
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.show_all = verbose() if show_all is None else show_all
        self.phase, self.partial, self.started = "starting", "", time.monotonic()
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.log = self.thread = None

    def __enter__(self):
        with Progress.active_lock:
            Progress.active += 1
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        self.log = open(self.log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in __exit__
        if not self.tty or self.show_all:
            self.say(f"{self.title} (full output: {self.log_path})")
        self.thread = threading.Thread(target=self._tick, daemon=True, name="progress")
        self.thread.start()
        return self

    def write(self, text):
        with self.lock:
            self.log.write(text)
            if self.show_all:
                sys.stdout.write(text)
            self.partial += text
            *lines, self.partial = self.partial.replace("\r", "\n").split("\n")
            for line in lines:
                self.phase = phase_of(line) or self.phase
        return len(text)

    def flush(self):
        with self.lock:
            self.log.flush()

    def elapsed(self):
        return time.monotonic() - self.started

    def line(self):
        return f"{self.title} ... {self.elapsed():.0f} s ({self.phase})"

    def _tick(self):
        last, drawn = time.monotonic(), False
        while not self.stopped.wait(1.0):
            if self.show_all:
                continue
            if self.tty and Progress.active == 1:  # one line rewritten in place, no wider than the terminal (no wrap)
                width = shutil.get_terminal_size().columns
                sys.stdout.write("\r\x1b[K" + self.line()[:max(width - 1, 10)])
                sys.stdout.flush()
                drawn = True
            elif time.monotonic() - last >= self.every:  # several at once (a cluster's hosts), or not a terminal: lines
                if drawn:
                    sys.stdout.write("\r\x1b[K")
                    drawn = False
                self.say(self.line())
                last = time.monotonic()

    def __exit__(self, *exc):
        with Progress.active_lock:
            Progress.active -= 1
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        if self.tty and not self.show_all:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
        with self.lock:
            self.log.close()
        return False

    def tail(self, lines=25):
        """The log's last lines, for the error that names it."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return ""


def main(argv):
    """python3 progress.py LOG TITLE -- CMD...: run CMD with one progress line; on failure its last lines and the log."""
    if len(argv) < 4 or argv[2] != "--":
        print(main.__doc__, file=sys.stderr)
        return 2
    log, title, command = argv[0], argv[1], argv[3:]
    with Progress(title, log) as progress:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace")
        for line in proc.stdout:
            progress.write(line)
        code = proc.wait()
    if code:
        print(progress.tail(), file=sys.stderr)
        print(f"{title} FAILED (exit {code}) after {progress.elapsed():.0f} s: its full output is in {log}", file=sys.stderr)
        return code
    print(f"{title}: done in {progress.elapsed():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
