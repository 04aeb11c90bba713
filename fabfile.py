"""Fabric entry point: `fab -l` lists the tasks, `fab --help TASK` explains one (deploy/tasks.py, deploy/cloud_tasks.py,
deploy/storage_tasks.py)."""

from invoke import Collection

from deploy import cloud_tasks, storage_tasks, tasks, watch_task

ns = Collection.from_module(tasks)
for cloud_task in Collection.from_module(cloud_tasks).tasks.values():  # launch, down, instances: top-level names too
    ns.add_task(cloud_task)
ns.add_task(storage_tasks.runs)  # `fab runs`: run storage, no host
ns.add_task(watch_task.watch)  # fab watch: follow a run, recover it elsewhere (deploy/recovery/)
