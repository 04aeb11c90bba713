"""The host side's bookkeeping helper (remote_scripts/fab_session.py) from the laptop.

    found = ask(conn, {"provision": {...}})          # one command, one JSON answer
    held = Bookkeeping(conn, request)                 # the same, kept open while it holds the host lock
    held.answer; held.beat(); held.release()

The helper's text travels with the command (`python3 -c`), so it works on a host that has no
code yet. A Bookkeeping runs on a channel of the task's connection, beside its commands: it is
not a remote step (Ctrl-C does not end it); its `release` is the task's last word to the host.
"""

import json
import shlex
import threading

from deploy.errors import DeployError
from deploy.host.connection import open_channel
from deploy.host.quoting import PYTHON3
from deploy.paths import REPO_ROOT

HELPER = REPO_ROOT / "remote_scripts" / "fab_session.py"


def command(request):
    """`exec python3 -c HELPER REQUEST` (the host's system python3: deploy.host.quoting.PYTHON3), quoted for the remote shell."""
    return f"exec {PYTHON3} -c {shlex.quote(HELPER.read_text())} {shlex.quote(json.dumps(request))}"


def unreadable(out, code):
    return DeployError(f"The host did not answer the deploy's bookkeeping command (it needs python3, as every Ubuntu has; "
                       f"exit {code}): {out.strip()[-600:]}")


def ask(conn, request):
    """The helper's answer to `request`, once (no lock in it); DeployError when it gives none."""
    out = conn.run(command(request), hide=True, warn=True, in_stream=False)
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise unreadable(out.stderr or out.stdout, out.exited) from None


class Bookkeeping:
    """The helper on a channel of its own, answering `request`, then (holding the lock) beats and the release."""

    def __init__(self, conn, request):
        self.conn = conn
        self.lock = threading.Lock()  # the keeper's beats and the release share the channel
        self.channel = open_channel(conn, command(request))
        self.stdout = self.channel.makefile("r")
        try:
            self.answer = self._read()
        except KeyboardInterrupt:  # it may hold the lock by now: it reads `release` once it has answered
            try:
                self.channel.sendall(b"release\n")
            finally:
                self.close()
            raise
        if self.answer is None:
            self.conn.check_alive()  # a connection lost on the way is that (HostUnreachable), not a helper's failure
            error = self._stderr()
            code = self.channel.exit_status if self.channel.status_event.wait(5) else "unknown"
            self.close()
            raise unreadable(error, code)
        self.open = bool((self.answer.get("lock") or {}).get("acquired"))
        if not self.open:
            self.close()

    def _read(self):
        try:
            line = self.stdout.readline()
        except (OSError, EOFError):  # socket.timeout is an OSError
            self.conn.check_alive()
            return None
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def _stderr(self):
        chunks = []
        try:
            while data := self.channel.recv_stderr(65536):
                chunks.append(data)
        except OSError:
            pass
        return b"".join(chunks).decode("utf-8", "replace")

    def _say(self, word):
        with self.lock:
            if not self.open:
                return None
            self.channel.sendall(f"{word}\n".encode())
            return self._read()

    def beat(self):
        """Touch the heartbeat and renew the lock's lease; True when the host did."""
        reply = self._say("beat")
        return bool(reply and reply.get("beat") is not None)

    def release(self):
        """Remove the lock (only while it is still ours) and end the helper; best-effort, as a dead connection
        leaves the lock to its lease and `fab unlock`."""
        try:
            self._say("release")
        except Exception:  # noqa: BLE001 - the host is gone or the channel closed: nothing more to do there
            pass
        self.close()

    def close(self):
        self.open = False
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001, S110
            pass
