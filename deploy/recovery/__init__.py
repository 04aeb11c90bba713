"""Never lose a run, the laptop's half: `fab watch` follows a run and moves it to another host when its
host is lost, and tells the user (webhook) what happened.

    settings.py   what the host agent gets of the inventory's notify: and recovery: (deploy.inventory.checks checks them)
    notify.py     one notification from the laptop (the same body as the host agent's: remote_scripts/notify.py)
    machine.py    the watch as a state machine: what a look at the run means (a pure function)
    record.py     the watch's record (state, transitions, recoveries, notifications) and the run's recoveries.json
    hosts.py      where a lost run goes next: recovery.hosts, else a launched replacement (recovery.launch)
    look.py       what the watch sees of a run, and how it says it
    move.py       a lost run moved to the next host that takes it (a recovery, step by step)
    watch.py      the loop: look, decide, act
"""
