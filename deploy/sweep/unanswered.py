"""Without run storage, a host of the sweep that stops answering keeps its runs: it may still be training them (a network
cut, a hung sshd), and nothing on the laptop can tell. The follower says which runs wait on it and goes on with the
others; once nothing else can progress it ends with exit 6 (HostUnreachable's code), saying how to go on: `fab sweep NAME`
again once the host answers, or, for a host gone for good, the host marked lost in the sweep's record by hand (its runs
are then trained on the other hosts from their start). With run storage the follower moves the runs instead (claims:
deploy/sweep/claims.py).

    waiting = Unanswered(follower)
    waiting.note(host, runs)     # the host has not answered for recovery.unreachable_minutes: said once
    waiting.back(host)           # it answers again
    waiting.blocks(rows)         # a run not ended waits on such a host
    code = waiting.give_up()     # the hosts and their runs said, with what to do; 6
"""

from deploy.errors import HostUnreachable
from deploy.recovery.record import iso
from deploy.sweep import plan
from deploy.sweep.table import TERMINAL


class Unanswered:
    def __init__(self, follower):
        self.follower = follower
        self.hosts = {}  # host -> its runs left (not ended) when it was last found not answering

    def note(self, host, runs):
        runs = [r for r in self.follower.record["queues"][host] if r in runs]  # in the queue's order
        if host not in self.hosts:
            minutes = self.follower.inv.recovery["unreachable_minutes"]
            self.follower.say(f"{iso()}  {host} has not answered for {minutes:g} min; without run storage its runs "
                              f"({', '.join(runs) or 'none'}) are not moved: a host that does not answer may still be "
                              "training them", "yellow")
        self.hosts[host] = runs

    def back(self, host):
        if self.hosts.pop(host, None) is not None:
            self.follower.say(f"{iso()}  {host} answers again", "bold")

    def blocks(self, rows):
        return any(r["host"] in self.hosts and r["state"] not in TERMINAL for r in rows)

    def give_up(self):
        name = self.follower.record["name"]
        for host, runs in self.hosts.items():
            self.follower.say(
                f"{host} does not answer, and {', '.join(runs) or 'its runs'} wait on it (no run storage: they are not moved); "
                f"nothing else of sweep {name} can go on. Run `fab sweep {name}` again once {host} answers. If {host} is gone "
                f"for good (nothing of it trains any more), add it to \"lost\" in {plan.record_path(name)} "
                f"(\"lost\": {{\"{host}\": \"{iso()}\"}}), then `fab sweep {name}` trains its runs on the other hosts, "
                "from their start.", "red")
        return HostUnreachable.exit_code
