"""Fabric entry point: `fab -l` lists the tasks, `fab --help TASK` explains one (deploy/tasks.py)."""

from invoke import Collection

from deploy import tasks

ns = Collection.from_module(tasks)
