"""A real single-node Slurm for the tests: Debian's slurm-wlm and munge, started here as root.

It starts only where the binaries are installed (``apt-get install -y slurm-wlm munge``), this
process is root and no other Slurm configuration is in place; otherwise :func:`start` says why
not, and the tests that need it are skipped with that reason. Slurm's ports are fixed: one such
cluster at a time on a machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by crrelu-llm's tests (tests/slurm_cluster.py)"
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "runuser")


def unavailable() -> str | None:
    """Why a test Slurm cannot start here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        return f"Slurm is not installed here (no {', '.join(missing)}; apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting Slurm's daemons needs root"
    if CONF.exists() and MARK not in CONF.read_text():
        return f"{CONF} belongs to another Slurm set-up; not touching it"
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        return "a slurmctld is already running"
    return None


def start(state: Path):
    """Start munged, slurmctld and slurmd; return the two Slurm processes once the node is idle."""
    host = socket.gethostname().split(".")[0]
    for sub in ("ctld", "d"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(f"""{MARK}
ClusterName=crrelutest
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ReturnToService=2
NodeName={host} CPUs={os.cpu_count()} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        os.chmod("/run/munge", 0o755)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    daemons = [
        subprocess.Popen([binary, "-D", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for binary, extra in (("slurmctld", ["-i"]), ("slurmd", []))
    ]
    deadline = time.time() + 30
    while time.time() < deadline:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
        if "idle" in states:
            return daemons
        time.sleep(0.5)
    stop(daemons)
    raise RuntimeError(f"Slurm did not come up in 30 s; see {state}/slurmctld.log and slurmd.log")


def stop(daemons) -> None:
    for process in daemons:
        process.terminate()
    for process in daemons:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    if CONF.exists() and MARK in CONF.read_text():
        CONF.unlink()
