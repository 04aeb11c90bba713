"""The laptop's side: Fabric tasks over small host operations (task -> its steps -> host operations).

    tasks/       the `fab` tasks, thin: options, the first line, errors as exit codes (fabfile.py loads them)
    host/        what talks to a host over its Connection: provision, sync, training, observe, the agent, the lock
    runs/        what the laptop knows of runs beyond the host: which were fetched (ledger), run storage
    aws/         EC2 for `fab launch`, `fab down`, `fab instances`
    recovery/    `fab watch`: a lost run moved to another host
    demo/        `make demo` (python -m deploy.demo) and the stand-in host on 127.0.0.1 (demo, tests, bench)
    inventory/   inventory.yaml, in one place; launched.py the hosts `fab launch` made, merged into it
    paths.py     the repository and the state folder (a leaf: it imports nothing of the project)
    errors.py    the errors every layer raises, each with its exit code
"""
