"""The machinery of `make test-cluster`, on this one machine and bound to 127.0.0.0/8: an OpenSSH server
that answers at 127.0.0.1 and 127.0.0.2 (two "nodes") with a host key and a client key of its own, and a
one-host Slurm (munge, slurmctld, slurmd) with a configuration written here. Everything lives in a
temporary folder; nothing under ~/.ssh or /etc is read or written (only /run/sshd, sshd's compiled-in
privilege separation directory, is created when it is missing).

The daemons run in the foreground as children of pytest, without the process guard's mark (a test's
end must not kill them); their jobs and ssh sessions carry it, through the job's environment or the
``.deepspeed_env`` a test writes.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List

import pytest

from launcher import free_port

SSH_TOOLS = ("/usr/sbin/sshd", "ssh", "ssh-keygen", "pdsh")
SLURM_TOOLS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "sbatch", "scancel", "squeue", "sinfo")
DEBIAN_PACKAGES = "openssh-server openssh-client pdsh slurmctld slurmd slurm-client munge"
NODES = ("127.0.0.1", "127.0.0.2")


def require(tools) -> None:
    """Skip (fail under ``CI=true``) when a tool is missing, naming it and the Debian packages."""
    missing = [tool for tool in tools if not (os.access(tool, os.X_OK) if os.path.isabs(tool) else shutil.which(tool))]
    if missing:
        message = f"missing {', '.join(missing)}: apt-get install {DEBIAN_PACKAGES}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _start(cmd: List[str], log_path: str, env: Dict[str, str] = None) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, **(env or {})))


def stop(procs) -> None:
    """Terminate the daemons (SIGKILL after 15 s) and reap them."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(ready, what: str, log_path: str, procs, timeout: float = 60.0) -> None:
    """Until ``ready()``; a daemon that exits or a timeout stops them all and fails with its log."""
    deadline = time.time() + timeout
    while not ready():
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead or time.time() > deadline:
            stop(procs)
            with open(log_path) as f:
                raise RuntimeError(f"{what} did not start ({', '.join(dead) or 'timeout'}):\n{f.read()[-3000:]}")
        time.sleep(0.2)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class SshNodes:
    """Two nodes over real ssh: ``ssh -F config`` (or pdsh with ``PDSH_SSH_ARGS_APPEND``) reaches both."""
    config: str
    port: int

    def pdsh_env(self) -> Dict[str, str]:
        return {"PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS_APPEND": f"-F {self.config}"}


def start_sshd(folder: str):
    """An sshd at 127.0.0.1 and 127.0.0.2 on a free port; returns ``(SshNodes, [process])``."""
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    except PermissionError:
        raise RuntimeError("sshd needs its privilege separation directory: sudo mkdir -p /run/sshd") from None
    keys = {name: os.path.join(folder, name) for name in ("host_key", "client_key")}
    for path in keys.values():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    shutil.copy(keys["client_key"] + ".pub", os.path.join(folder, "authorized_keys"))
    port = free_port()
    server = os.path.join(folder, "sshd_config")
    with open(server, "w") as f:
        f.write("".join(f"ListenAddress {node}\n" for node in NODES) + f"Port {port}\nHostKey {keys['host_key']}\n"
                f"AuthorizedKeysFile {folder}/authorized_keys\nPidFile {folder}/sshd.pid\nUsePAM no\n"
                "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\n")
    with open(keys["host_key"] + ".pub") as f:
        host_key = " ".join(f.read().split()[:2])
    with open(os.path.join(folder, "known_hosts"), "w") as f:
        f.write("".join(f"[{node}]:{port} {host_key}\n" for node in NODES))
    client = os.path.join(folder, "ssh_config")
    with open(client, "w") as f:
        f.write(f"Host {' '.join(NODES)}\n    Port {port}\n    User {getpass.getuser()}\n"
                f"    IdentityFile {keys['client_key']}\n    IdentitiesOnly yes\n    BatchMode yes\n"
                f"    UserKnownHostsFile {folder}/known_hosts\n    GlobalKnownHostsFile /dev/null\n"
                "    StrictHostKeyChecking yes\n")
    log = os.path.join(folder, "sshd.log")
    procs = [_start(["/usr/sbin/sshd", "-D", "-e", "-f", server], log)]
    _wait(lambda: all(_listening(node, port) for node in NODES), "sshd", log, procs)
    return SshNodes(client, port), procs


@dataclass
class Slurm:
    """A one-node Slurm: ``env`` points its client commands (sbatch, squeue, scancel) at it."""
    env: Dict[str, str]
    node: str
    cpus: int

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=dict(os.environ, **self.env), capture_output=True, text=True,
                              check=True).stdout.strip()


def start_slurm(folder: str):
    """munged, slurmctld and slurmd with a slurm.conf bound to 127.0.0.1; returns ``(Slurm, [processes])``.
    The node is called ``localhost`` (Slurm's node names become the job's hostfile and master address);
    the controller is named after this host, as slurmctld requires."""
    user, host, cpus = getpass.getuser(), socket.gethostname().split(".")[0], os.cpu_count() or 1
    munge_dir = os.path.join(folder, "munge")
    for sub in ("munge", "state", "spool"):
        os.makedirs(os.path.join(folder, sub), mode=0o755, exist_ok=True)
    key = os.path.join(munge_dir, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o600)
    socket_path = os.path.join(munge_dir, "munge.sock")
    conf = os.path.join(folder, "slurm.conf")
    settings = {
        "ClusterName": "sift", "SlurmctldHost": f"{host}(127.0.0.1)", "SlurmctldPort": free_port(),
        "SlurmdPort": free_port(), "SlurmUser": user, "SlurmdUser": user, "AuthType": "auth/munge",
        "AuthInfo": f"socket={socket_path}", "CredType": "cred/munge", "StateSaveLocation": f"{folder}/state",
        "SlurmdSpoolDir": f"{folder}/spool", "SlurmctldPidFile": f"{folder}/slurmctld.pid",
        "SlurmdPidFile": f"{folder}/slurmd.pid", "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none",
        "MpiDefault": "none", "SchedulerType": "sched/builtin", "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core", "ReturnToService": 2, "JobCompType": "jobcomp/none",
        "AccountingStorageType": "accounting_storage/none", "SwitchType": "switch/none",
        "CommunicationParameters": "NoCtldInAddrAny,NoInAddrAny",  # 127.0.0.1, not every address
        "NodeName": f"localhost NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} State=UNKNOWN",
        "PartitionName": "test Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
    }
    with open(conf, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in settings.items()))
    env = {"SLURM_CONF": conf}
    log = os.path.join(folder, "daemons.log")
    procs = [_start(["/usr/sbin/munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
                     f"--log-file={munge_dir}/munged.log", f"--pid-file={munge_dir}/munged.pid",
                     f"--seed-file={munge_dir}/munged.seed"], log)]
    _wait(lambda: os.path.exists(socket_path), "munged", log, procs)
    procs.append(_start(["/usr/sbin/slurmctld", "-D", "-i"], log + ".slurmctld", env))
    procs.append(_start(["/usr/sbin/slurmd", "-D", "-N", "localhost"], log + ".slurmd", env))
    slurm = Slurm(env, "localhost", cpus)

    def idle() -> bool:
        try:
            return slurm.run("sinfo", "-h", "-n", "localhost", "-o", "%T") == "idle"
        except subprocess.CalledProcessError:
            return False
    _wait(idle, "slurm", log + ".slurmd", procs)
    return slurm, procs

