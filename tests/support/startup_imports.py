"""What a Python started with `-X importtime` imported: the heavy libraries a `fab` process must not pay for."""

import re

HEAVY = ("tensorflow", "keras", "numpy", "matplotlib", "boto3", "botocore", "pandas", "scipy")


def imported(stderr):
    """The top-level packages `python -X importtime` lists in `stderr`."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", stderr, re.M)}


def heavy_in(stderr):
    return sorted(set(HEAVY) & imported(stderr))

