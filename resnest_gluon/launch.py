"""Multi-host launch: host lists, Slurm allocations, pre-flight checks, rank-to-host naming.

This module owns what ``resnest-launch`` (``scripts/launch.py``) checks before it hands a job
to ``horovodrun``, and how it names the host of a rank that failed:

* :func:`read_hostfile` / :func:`parse_host_list` read ``HOST slots=N`` lines (the hostfile
  of ``horovodrun -hostfile``) or ``host:N,host:N`` (``-H``), with comments and blank lines;
* :func:`expand_nodelist` and :func:`slurm_hosts` turn a Slurm allocation
  (``SLURM_JOB_NODELIST`` such as ``gpu[01-04,07],login1``) into hosts with their slots;
* :func:`assign_ranks` gives ranks to hosts as ``horovodrun`` does (host by host, in order);
* :func:`check_hosts` runs one bounded ssh probe per host, in parallel: reachable, has the
  network interface, sees the shared work directory;
* :func:`failed_rank` reads ``horovodrun``'s report of the first process that failed, and
  :func:`stop_leftovers` kills what a failed launch left running on its hosts.

Nothing here imports Horovod; the command runs ``horovodrun`` as a program.
"""
import os
import re
import shlex
import signal
import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import UserError

__all__ = ["Host", "LaunchError", "read_hostfile", "parse_host_list", "expand_nodelist",
           "slurm_hosts", "assign_ranks", "is_local", "local_interfaces", "check_hosts",
           "stop_leftovers", "JOB_VARIABLE", "failed_rank", "describe_exit"]


class LaunchError(UserError):
    """A host list, host or network setting that cannot run the job (the message says which)."""


class Host(NamedTuple):
    """A host name and the processes it runs (its slots)."""
    name: str
    slots: int


_NAME = r"[A-Za-z0-9_.\-]+"


def _host(name: str, slots: str, where: str) -> Host:
    if not re.fullmatch(_NAME, name) or not slots.isdigit() or int(slots) < 1:
        raise LaunchError(f"{where}: expected HOST slots=N with N >= 1, got "
                          f"{name!r} slots={slots!r}")
    return Host(name, int(slots))


def read_hostfile(path: str) -> List[Host]:
    """Hosts from a file of ``HOST slots=N`` lines (``HOST`` alone is one slot; ``#`` starts a
    comment)."""
    hosts = []
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            match = re.fullmatch(r"(\S+)(?:\s+slots\s*=\s*(\S+))?", text)
            where = f"{path}:{number}"
            if not match:
                raise LaunchError(f"{where}: expected 'HOST slots=N', got {text!r}")
            hosts.append(_host(match.group(1), match.group(2) or "1", where))
    if not hosts:
        raise LaunchError(f"{path} names no hosts")
    return _no_repeats(hosts, path)


def parse_host_list(text: str) -> List[Host]:
    """Hosts from ``host:N,host:N`` (``host`` alone is one slot)."""
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, slots = item.partition(":")
        hosts.append(_host(name, slots or "1", f"host list {text!r}"))
    if not hosts:
        raise LaunchError(f"host list {text!r} names no hosts")
    return _no_repeats(hosts, f"host list {text!r}")


def _no_repeats(hosts: List[Host], where: str) -> List[Host]:
    seen = set()
    for host in hosts:
        if host.name in seen:
            raise LaunchError(f"{where} names {host.name} twice (give its slots once)")
        seen.add(host.name)
    return hosts


def expand_nodelist(nodelist: str) -> List[str]:
    """Expand a Slurm node list: ``gpu[01-03,07],cpu-a[1-2]b`` -> gpu01, gpu02, gpu03, gpu07,
    cpu-a1b, cpu-a2b (zero padding kept; several bracket groups in one name multiply)."""
    names = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        expanded = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            parts = [literal]
            if ranges:
                parts = [literal + number for number in _expand_ranges(ranges, nodelist)]
            expanded = [head + part for head in expanded for part in parts]
        names.extend(name for name in expanded if name)
    if not names:
        raise LaunchError(f"Slurm node list {nodelist!r} names no nodes")
    return names


def _expand_ranges(ranges: str, nodelist: str) -> List[str]:
    numbers = []
    for span in ranges.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", span.strip())
        if not match:
            raise LaunchError(f"cannot read {span!r} in Slurm node list {nodelist!r}")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise LaunchError(f"range {span!r} runs backwards in Slurm node list {nodelist!r}")
        numbers.extend(str(n).zfill(len(first)) for n in range(int(first), int(last) + 1))
    return numbers


def slurm_hosts(environ=None, slots_per_host: Optional[int] = None) -> List[Host]:
    """The hosts of the Slurm allocation this runs in, with ``slots_per_host`` each (default:
    ``SLURM_GPUS_ON_NODE``, else ``SLURM_NTASKS_PER_NODE``, else 1)."""
    environ = os.environ if environ is None else environ
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("--slurm needs SLURM_JOB_NODELIST: run it inside an allocation "
                          "(sbatch or salloc)")
    if slots_per_host is None:
        raw = environ.get("SLURM_GPUS_ON_NODE") or environ.get("SLURM_NTASKS_PER_NODE") or "1"
        match = re.match(r"\d+", raw)   # SLURM_NTASKS_PER_NODE may read '8(x4)'
        slots_per_host = int(match.group(0)) if match else 1
    return [Host(name, slots_per_host) for name in expand_nodelist(nodelist)]


def assign_ranks(hosts: Sequence[Host], processes: int) -> List[Tuple[int, str]]:
    """``(rank, host)`` for ``processes`` ranks, filling each host's slots in order, as
    ``horovodrun`` does."""
    available = sum(host.slots for host in hosts)
    if processes > available:
        raise LaunchError(f"-np {processes} needs {processes} slots; the hosts have "
                          f"{available} ({', '.join(f'{h.name}:{h.slots}' for h in hosts)})")
    ranks = []
    for host in hosts:
        for _ in range(host.slots):
            if len(ranks) < processes:
                ranks.append((len(ranks), host.name))
    return ranks


def local_interfaces() -> List[str]:
    """The network interfaces of this machine."""
    return [name for _, name in socket.if_nameindex()]


def _local_addresses() -> set:
    import psutil  # Horovod's own dependency, present wherever horovodrun is
    return {addr.address for addrs in psutil.net_if_addrs().values() for addr in addrs}


def is_local(host: str) -> bool:
    """True when ``host`` names this machine (as ``horovodrun`` decides: by its addresses)."""
    if host in ("localhost", "127.0.0.1", socket.gethostname()):
        return True
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return False
    return address.startswith("127.") or address in _local_addresses()


def _ssh(host, command, port=None, identity=None, timeout_s=5):
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
            f"ConnectTimeout={timeout_s}"]
    if port:
        argv += ["-p", str(port)]
    if identity:
        argv += ["-i", identity]
    return argv + [host, command]


def _run_on(host, command, port, identity, timeout_s):
    """Run the shell ``command`` on ``host`` (by ssh unless it is this machine), waiting at
    most ``timeout_s`` + 10 s; a CompletedProcess (``subprocess.TimeoutExpired`` past that)."""
    argv = ["sh", "-c", command] if is_local(host) else _ssh(host, command, port, identity,
                                                               timeout_s)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s + 10)


def _probe(host, iface, token_path, port, identity, timeout_s) -> Optional[str]:
    """One host's problem, or None when it is ready."""
    command = "ls /sys/class/net"
    if token_path:
        command += f"; echo ---; cat {shlex.quote(token_path)} 2>/dev/null"
    try:
        result = _run_on(host, command, port, identity, timeout_s)
    except subprocess.TimeoutExpired:
        return f"host {host} did not answer over ssh within {timeout_s + 10} s"
    if result.returncode == 255:
        reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        return (f"cannot reach host {host} by ssh ({reason}); horovodrun needs ssh without a "
                f"password from this machine to every host")
    interfaces, _, token = result.stdout.partition("---")
    names = interfaces.split()
    if iface and iface not in names:
        return (f"host {host} has no network interface {iface!r} (it has: "
                f"{', '.join(names)}); --network-interface must name one every host has")
    if token_path and token.strip() != os.path.basename(token_path):
        return (f"host {host} does not see the work directory {os.path.dirname(token_path)} "
                f"(a file written there here is not there): every host needs it on a "
                f"shared filesystem")
    return None


def check_hosts(hosts: Sequence[str], iface: Optional[str] = None,
                workdir: Optional[str] = None, port: Optional[int] = None,
                identity: Optional[str] = None, timeout_s: int = 5) -> None:
    """Check, in parallel and within ``timeout_s`` (+10 s) per host, that every host answers
    over ssh, has ``iface`` and sees ``workdir``; :class:`LaunchError` naming each host that
    fails. ``iface`` must also exist here: ``horovodrun`` serves its rendezvous on its address.
    """
    if iface and iface not in local_interfaces():
        raise LaunchError(f"this machine has no network interface {iface!r} (it has: "
                          f"{', '.join(local_interfaces())}); horovodrun serves the job's "
                          f"rendezvous on that interface's address, so launch from a machine "
                          f"that has it")
    token_path = None
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        token_path = os.path.join(os.path.abspath(workdir), f".launch-{uuid.uuid4().hex}")
        with open(token_path, "w") as token:
            token.write(os.path.basename(token_path) + "\n")
    try:
        with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
            problems = list(pool.map(
                lambda host: _probe(host, iface, token_path, port, identity, timeout_s), hosts))
    finally:
        if token_path:
            os.unlink(token_path)
    problems = [problem for problem in problems if problem]
    if problems:
        more = len(problems) - 1
        raise LaunchError(problems[0] + (f" [{more} more host{'s' if more > 1 else ''} "
                                         f"failed the check too]" if more else ""))


JOB_VARIABLE = "RESNEST_LAUNCH_ID"


def stop_leftovers(hosts: Sequence[str], job_id: str, port: Optional[int] = None,
                   identity: Optional[str] = None, timeout_s: int = 5) -> Dict[str, int]:
    """Kill, on every host, the processes whose environment has ``RESNEST_LAUNCH_ID=job_id``
    (the ranks of one launch and their loader workers); returns the count per host.

    ``horovodrun`` stops a failed job by ending its ssh sessions, and a rank whose session
    ended keeps running (without a terminal nothing sends it SIGHUP) until it notices its
    peers are gone: long enough to hold the work directory against the relaunch.
    """
    command = (f"for p in /proc/[0-9]*; do grep -qsxz '{JOB_VARIABLE}={job_id}' $p/environ "
               f"&& kill -9 ${{p#/proc/}} 2>/dev/null && echo ${{p#/proc/}}; done; true")

    def stop(host):
        try:
            return len(_run_on(host, command, port, identity, timeout_s).stdout.split())
        except subprocess.TimeoutExpired:
            return 0

    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        return dict(zip(hosts, pool.map(stop, hosts)))


def failed_rank(output: str) -> Optional[Tuple[int, int]]:
    """``(rank, exit code)`` of the first failed process in ``horovodrun``'s output, or None."""
    match = re.search(r"Process name: (\d+)\s+Exit code: (-?\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def describe_exit(code: int) -> str:
    """An exit code in words: -9 or 137 -> 'killed by signal 9 (SIGKILL)'; 255 is what ssh
    returns for a remote process that ended without an exit status."""
    if code == 255:
        return ("exit code 255: its ssh session ended without an exit status, so it was "
                "killed by a signal or its host or connection was lost")
    number = -code if code < 0 else code - 128 if 128 < code <= 128 + 64 else 0
    if number:
        try:
            return f"killed by signal {number} ({signal.Signals(number).name})"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit code {code}"
