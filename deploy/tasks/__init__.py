"""The Fabric tasks (`fab -l`), thin: each parses its options, then calls host operations (deploy/host/).

    plumbing.py    host_task: inventory, host, lock, errors as exit codes, Ctrl-C; `say`
    deploying.py   provision, sync-code, sync-data, preflight, smoke-test, deploy-full (its steps in order)
    running.py     train, stop, autostop, unlock
    observing.py   monitor, logs, fetch-results, tensorboard-tunnel
    cloud.py       launch, down, instances (EC2: deploy/aws/)
    storage.py     runs (run storage: deploy/runs/storage.py)
    watch.py       watch (recovery: deploy/recovery/)
    compare.py     compare (two runs' paired difference: deploy/runs/compare.py)
    sweep.py       sweep (configurations over hosts: deploy/sweep/)

fabfile.py collects them; a task's docstring is its `fab --help TASK` text.
"""
