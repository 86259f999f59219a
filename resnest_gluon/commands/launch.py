"""``resnest-launch``: check every host, then run the job under ``horovodrun`` (``--help``).

Before a job takes a cluster, one bounded ssh probe per host (in parallel) checks what
otherwise fails late or hangs: the host answers, has the network interface, and sees the work
directory (the ``--workdir`` of the command) on a shared filesystem. Then ``horovodrun`` runs
with the same hosts, and when a rank fails, the last line names its host and how it ended
instead of ``horovodrun``'s traceback, after the job's processes left on any host are killed
(so that the relaunch finds the work directory free). Hosts come from a hostfile, a ``-H``
list or the Slurm allocation the command runs in (``--slurm``; see
``scripts/slurm_train.sbatch``).
"""
import argparse
import collections
import logging
import os
import shutil
import subprocess
import sys
import uuid

from ..errors import RunFailure
from ..launch import (
    JOB_VARIABLE,
    LaunchError,
    assign_ranks,
    check_hosts,
    describe_exit,
    failed_rank,
    parse_host_list,
    read_hostfile,
    slurm_hosts,
    stop_leftovers,
)
from . import setup_logging
from .cli import command, positive_int

log = logging.getLogger("launch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnest-launch", description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="example: resnest-launch -np 16 --hostfile hosts --network-interface eth0 -- "
               "python scripts/train.py --config configs/resnest50.yaml --workdir /shared/r50")
    parser.add_argument("-np", "--num-proc", dest="np", type=positive_int, required=True,
                        help="processes (one per GPU)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hostfile", "-hostfile", help="lines of 'HOST slots=N'")
    where.add_argument("-H", "--hosts", help="host:slots,host:slots")
    where.add_argument("--slurm", action="store_true",
                       help="the hosts of this Slurm allocation (SLURM_JOB_NODELIST)")
    parser.add_argument("--slots-per-host", type=positive_int, default=None,
                        help="with --slurm: processes per node (default: SLURM_GPUS_ON_NODE, "
                             "else SLURM_NTASKS_PER_NODE, else 1)")
    parser.add_argument("--network-interface", dest="iface", default=None,
                        help="interface every host (and this machine) uses for the job, e.g. "
                             "eth0 or ib0; sets HOROVOD_GLOO_IFACE and NCCL_SOCKET_IFNAME")
    parser.add_argument("--ssh-identity-file", default=None, help="ssh key for the hosts")
    parser.add_argument("--ssh-port", type=positive_int, default=None)
    parser.add_argument("--connect-timeout", type=positive_int, default=5,
                        help="seconds to wait for each host's ssh (5)")
    parser.add_argument("--check-only", action="store_true",
                        help="check the hosts and stop")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after --: the training command, e.g. python scripts/train.py ...")
    return parser


def _hosts(args):
    if args.hostfile:
        return read_hostfile(args.hostfile)
    if args.hosts:
        return parse_host_list(args.hosts)
    return slurm_hosts(slots_per_host=args.slots_per_host)


def _workdir_of(argv):
    for n, word in enumerate(argv):
        if word == "--workdir" and n + 1 < len(argv):
            return argv[n + 1]
        if word.startswith("--workdir="):
            return word.split("=", 1)[1]
    return None


def _horovodrun():
    beside = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    found = beside if os.path.exists(beside) else shutil.which("horovodrun")
    if not found:
        raise LaunchError("horovodrun is not installed in this environment (make env builds it)")
    return found


def horovodrun_argv(args, hosts, job):
    """The ``horovodrun`` command line for ``job`` on ``hosts``."""
    argv = [_horovodrun(), "-np", str(args.np), "-H",
            ",".join(f"{host.name}:{host.slots}" for host in hosts)]
    if args.iface:
        argv += ["--network-interface", args.iface]
    if args.ssh_identity_file:
        argv += ["--ssh-identity-file", args.ssh_identity_file]
    if args.ssh_port:
        argv += ["--ssh-port", str(args.ssh_port)]
    return argv + job


def run_job(argv, ranks, env=None):
    """Run ``horovodrun`` (with ``env``), echoing its output; on a failed rank raise
    :class:`RunFailure` naming the rank's host (``horovodrun``'s own traceback is left out)."""
    tail = collections.deque(maxlen=400)
    in_traceback = False
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env) as proc:
        for line in proc.stdout:
            tail.append(line)
            # Ranks' lines start with '[rank]'; an unprefixed traceback is horovodrun's own.
            in_traceback = in_traceback or line.startswith("Traceback (most recent call")
            if not in_traceback or line.startswith("["):
                sys.stdout.write(line)
                sys.stdout.flush()
    if proc.returncode == 0:
        return 0
    failed = failed_rank("".join(tail))
    if failed is None:
        raise RunFailure(f"horovodrun ended with exit code {proc.returncode}: "
                         f"{''.join(tail).strip().splitlines()[-1] if tail else 'no output'}")
    rank, code = failed
    host = dict(ranks).get(rank, "?")
    raise RunFailure(f"rank {rank} on host {host} ended first ({describe_exit(code)}); "
                     f"horovodrun stopped the other ranks. The same command resumes from the "
                     f"last checkpoint")


@command("launch", interrupted="interrupted: the job was stopped; the same command resumes it")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    job = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not job and not args.check_only:
        raise LaunchError("no command to run: put it after --, e.g. -- python scripts/train.py")
    hosts = _hosts(args)
    ranks = assign_ranks(hosts, args.np)
    used = list(dict.fromkeys(host for _, host in ranks))
    hosts = [host for host in hosts if host.name in used]
    check_hosts(used, args.iface, _workdir_of(job), args.ssh_port, args.ssh_identity_file,
                args.connect_timeout)
    log.info("%d hosts ready (%s)%s", len(used), ", ".join(f"{h.name}:{h.slots}" for h in hosts),
             f" on {args.iface}" if args.iface else "")
    if args.check_only:
        return 0
    job_id = uuid.uuid4().hex   # horovodrun passes it on to every rank's environment
    finished = False
    try:
        code = run_job(horovodrun_argv(args, hosts, job), ranks,
                       env=dict(os.environ, **{JOB_VARIABLE: job_id}))
        finished = True
        return code
    finally:
        if not finished:
            for host, count in stop_leftovers(used, job_id, args.ssh_port,
                                              args.ssh_identity_file,
                                              args.connect_timeout).items():
                if count:
                    log.info("stopped %d leftover process(es) of the job on %s", count, host)


if __name__ == "__main__":
    sys.exit(main())
