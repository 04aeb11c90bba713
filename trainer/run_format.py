"""The run and host format (remote_scripts/run_format.py: file names, the run-name pattern, run states, exit codes,
the host agent's defaults, the atomic write) for the trainer and the laptop.

    from trainer.run_format import run_format
    run_format.RUN_NAME.fullmatch(name)
    notify = host_script("notify", "facenet_remote_notify")   # another host script, loaded from its file

Its one owner lives among the host scripts, which run with the system python3 and import only what lies beside
them. This module loads that file as the module `run_format`, so a host script loaded later in the same process
(host_script here, or remote_scripts/ on sys.path as trainer/storage/uploader.py does) shares the very same module.
"""

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "remote_scripts"


def host_script(name, module_name=None):
    """remote_scripts/NAME.py as a module (registered as `module_name`, default NAME), its run_format the shared one."""
    module_name = module_name or name
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


run_format = host_script("run_format")
