"""What the host is, for `fab monitor`: its GPUs, its disk, its uptime (standard library only).

    gpus()          # [{name, utilization, memory_used_mib, memory_total_mib}], or None without nvidia-smi
    disk(path)      # {path, free_bytes, total_bytes, low}: `low` is what `fab monitor` warns about
    uptime()        # seconds since the boot, or None
"""

import shutil
import subprocess

# `fab monitor` warns below 2 GiB free or 5 % of the disk, whichever is smaller, and always below 64 MiB
LOW_DISK_BYTES, LOW_DISK_FRACTION, LOW_DISK_FLOOR = 2 * 2**30, 0.05, 64 * 2**20


def gpus():
    """nvidia-smi's view, or None where there is no nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    query = "name,utilization.gpu,memory.used,memory.total"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return [{"error": str(e)}]
    if out.returncode != 0:
        return [{"error": (out.stderr or out.stdout).strip()}]
    rows = []
    for line in out.stdout.strip().splitlines():
        name, util, used, total = (v.strip() for v in line.split(","))
        rows.append({"name": name, "utilization": util, "memory_used_mib": used, "memory_total_mib": total})
    return rows


def disk(path):
    usage = shutil.disk_usage(path)
    low = usage.free < max(min(LOW_DISK_BYTES, LOW_DISK_FRACTION * usage.total), LOW_DISK_FLOOR)
    return {"path": path, "free_bytes": usage.free, "total_bytes": usage.total, "low": low}


def uptime():
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
