"""Host operations: small functions that take a host's Connection (or Target) and do one thing there.

    connection.py  which host (-H, remembered, default_host), its Connection, rsync's ssh
    remembered.py  the remembered host (state.json) and the kept host keys (known_hosts)
    steps.py       Ctrl-C ends the remote step's process group; heartbeat.py: SSH keepalives
    quoting.py     remote paths as the host's shell reads them (rq, rjoin), the host's python3
    session.py     one connection, one lock and one bookkeeping command for the tasks of a `fab` invocation
    bookkeeping.py that command: the host-side helper (remote_scripts/fab_session.py), answered in JSON
    lock.py        one command at a time changes a host
    agent.py       the host agent: heartbeat, its settings, autostop; budget.py the budget cap it keeps
    provision.py   apt packages, GPU report, venv, pinned requirements
    sync.py        code, data and runs to the host with rsync
    checks.py      before a training: preflight (the data validated) and the smoke test with its estimate
    run_config.py  the training config as the host reads it: this machine's copy, sent
    training.py    the trainer there: launch in tmux, run state, stop
    observe.py     the monitor screen, log tail, fetching results, the TensorBoard tunnel
    cluster.py     several hosts as one training: each step on every host at once
"""
