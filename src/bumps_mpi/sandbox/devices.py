"""GPUs in the sandbox: the device files a job asking for GPUs may use, and which GPUs a rank was given.

Landlock (ABI 5) refuses ioctl on a device file that has only a read rule, and a
GPU is driven by ioctl: a job with `gpus` gets read-write rules on the GPU
device files and nothing else of /dev (NVIDIA's /dev/nvidia*, the DRM render
nodes of AMD and Intel under /dev/dri). Under Slurm with its cgroup device
constraint, only the GPUs of the allocation can be opened at all; where Slurm
names them (SLURM_STEP_GPUS, SLURM_JOB_GPUS), only their /dev/nvidiaN are added.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

# what says which GPUs a process was given: CUDA and ROCm runtimes, Slurm's step and job
VISIBLE = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "SLURM_STEP_GPUS",
           "SLURM_JOB_GPUS")  # fmt: skip


def gpu_device_files(dev: str = "/dev", env: Mapping[str, str] | None = None) -> list[str]:
    """The GPU device files to open read-write: control files (nvidiactl, nvidia-uvm, ...), the numbered
    GPUs Slurm gave the job (all of them when it names none), /dev/dri's nodes."""
    env = os.environ if env is None else env
    given = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS") or ""
    wanted = {f"nvidia{n}" for n in re.findall(r"\d+", given)}
    found = []
    for path in sorted(glob.glob(os.path.join(dev, "nvidia*"))):
        name = os.path.basename(path)
        if not os.path.isfile(path) and not _is_device(path):  # a directory (nvidia-caps): not opened
            continue
        if re.fullmatch(r"nvidia\d+", name) and wanted and name not in wanted:
            continue
        if re.fullmatch(r"nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)", name):
            found.append(path)
    found += sorted(glob.glob(os.path.join(dev, "dri", "renderD*")))  # render nodes: compute, no display
    return [p for p in found if os.path.isfile(p) or _is_device(p)]


def _is_device(path: str) -> bool:
    import stat

    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def visible_gpus(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What this rank was told of its GPUs (for ranks.json and the report); empty without any."""
    env = os.environ if env is None else env
    return {name: env[name] for name in VISIBLE if env.get(name)}
