"""SSH keepalives for a paramiko transport: a host that stops answering is found dead, and its transport closed, so
a command blocked on a dead network returns (deploy.host.connection.HostConnection starts one per connection)."""

import threading
import time


class Heartbeat(threading.Thread):
    """Asks the server for a reply to a keepalive request (as OpenSSH's ServerAliveInterval does)."""

    def __init__(self, transport, interval, count_max):
        super().__init__(daemon=True, name="ssh-heartbeat")
        self.transport, self.interval, self.count_max = transport, interval, count_max
        self.dead = False

    def run(self):
        while self.transport.is_active():
            answered = threading.Event()

            def ask(answered=answered):
                self.transport.global_request("keepalive@openssh.com", wait=True)  # OpenSSH answers "failure": any answer counts
                answered.set()

            threading.Thread(target=ask, daemon=True).start()
            if not answered.wait(self.interval * self.count_max):
                if self.transport.is_active():
                    self.dead = True
                    self.transport.close()
                return
            time.sleep(self.interval)
