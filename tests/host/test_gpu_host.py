"""The GPU code paths, on a host that has an nvidia-smi but no GPU behind it.

A GPU cannot run here, so this is the one stand-in: a fake `nvidia-smi` on the PATH of a
second real sshd (via its SetEnv). Everything else (fab, SSH, pip, TensorFlow) is real.
"""

import pytest

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *utilization.gpu*) echo "NVIDIA H100 80GB HBM3, 87, 30512, 81559" ;;
  *driver_version*) echo "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB" ;;
  *) echo "unexpected arguments: $*" >&2; exit 9 ;;
esac
"""


@pytest.fixture
def gpu_env(fake_bin_host):
    return fake_bin_host(nvidia_smi=FAKE_NVIDIA_SMI)


def test_provision_picks_the_gpu_requirements_and_fails_loudly_when_tensorflow_sees_no_gpu(gpu_env):
    # The CPU build "installed" where nvidia-smi sees a GPU: exactly the mismatch provision must catch.
    gpu_env.write(pip={"extra_args": ["--no-index"], "gpu": ["tensorflow-cpu", "numpy", "pyyaml", "rich"]})
    proc = gpu_env.fab("provision")
    assert proc.returncode == 1, proc.out
    assert "GPU: NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB" in proc.out
    assert "Installing GPU requirements" in proc.out
    assert "nvidia-smi reports 1 GPU(s) but TensorFlow sees 0" in proc.out and "tensorflow[and-cuda]" in proc.out
    again = gpu_env.fab("provision")  # no marker was written: it checks again instead of pretending all is well
    assert again.returncode == 1 and "Installing GPU requirements" in again.out


def test_monitor_shows_gpu_utilisation_and_memory(gpu_env):
    assert gpu_env.fab("sync-code").returncode == 0
    proc = gpu_env.fab("monitor")
    assert proc.returncode == 5, proc.out  # no run yet
    assert "NVIDIA H100 80GB HBM3  util 87%  memory 30512/81559 MiB" in proc.out
    assert "No training has been started on this host" in proc.out
