"""Fabric entry point: `fab -l` lists the tasks, `fab --help TASK` explains one (deploy/tasks/: a module per concern)."""

from invoke import Collection

from deploy.tasks import cloud, compare, deploying, observing, running, storage, sweep, watch

ns = Collection("tasks")  # the name `fab -l -F json` showed when this was Collection.from_module(deploy.tasks)
for module in (deploying, running, observing, cloud, storage, watch, compare, sweep):  # every task a top-level name: fab deploy-full, fab runs
    for each in Collection.from_module(module).tasks.values():
        ns.add_task(each)
