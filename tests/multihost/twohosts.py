"""Two real hosts on one machine: network namespaces joined by a bridge, each running sshd.

This module owns the two-host test bed of ``make test-multihost``. :class:`TwoHosts` creates

* a bridge ``rg0`` in the machine's own namespace (the launcher's side, 10.213.77.254/24),
* two network namespaces, each with one veth end named ``rg0`` on the bridge (10.213.77.1 and
  .2) and its loopback; there is no route out of 10.213.77.0/24,
* the host names ``rg-host1`` and ``rg-host2`` in /etc/hosts (lines tagged
  ``resnest-gluon-twohosts``),
* an ed25519 key made for the test and, in each namespace, Debian's sshd on port 22
  accepting only that key for root (its own config, host key and pid file in the state
  directory), with its own host name (UTS namespace) and its own mount namespace.

The filesystem is shared, as a cluster's work directory is, except ``private`` in the state
directory: each host has an empty tmpfs there, as a node's local disk. Every interface is
called ``rg0`` so that ``horovodrun --network-interface rg0`` holds on the launcher and on
both hosts.
:meth:`TwoHosts.shape` limits each host's outgoing bandwidth with a token bucket (``tc tbf``).
:meth:`TwoHosts.down` removes everything, also what an earlier interrupted run left.

Run by hand::

    python tests/multihost/twohosts.py up      # prints the hostfile and ssh key to use
    python tests/multihost/twohosts.py down
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

PREFIX = "10.213.77"
BRIDGE = "rg0"
IFACE = "rg0"
TAG = "# resnest-gluon-twohosts"
HOSTS = ("rg-host1", "rg-host2")
STATE = "/tmp/resnest-gluon-twohosts"


class BedSetupError(RuntimeError):
    """The two hosts could not be set up (the message says what failed)."""


def _run(*cmd, check=True, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise BedSetupError(f"{' '.join(cmd)} failed: {(result.stderr or result.stdout).strip()}")
    return result


def namespace(host: str) -> str:
    """The network namespace of ``host``."""
    return f"rgtest-{host}"


def address(host: str) -> str:
    """The IPv4 address of ``host``."""
    return f"{PREFIX}.{HOSTS.index(host) + 1}"


def in_host(host: str, *cmd, **kwargs):
    """Run ``cmd`` inside ``host``'s network namespace; a CompletedProcess."""
    return _run("ip", "netns", "exec", namespace(host), *cmd, **kwargs)


def pids_in(host: str):
    """PIDs of the processes living in ``host``'s network namespace."""
    result = _run("ip", "netns", "pids", namespace(host), check=False)
    return [int(p) for p in result.stdout.split()]


class TwoHosts:
    """The test bed (see the module docstring); a context manager that always tears down.

    Parameters
    ----------
    state : str
        Directory for keys, sshd configs, logs and the hostfile.
    """

    def __init__(self, state: str = STATE):
        self.state = state
        self.key = os.path.join(state, "id_ed25519")
        self.hostfile = os.path.join(state, "hostfile")
        self.private = os.path.join(state, "private")   # each host's own, not shared

    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc):
        self.down()

    def up(self):
        """Create the bridge, namespaces, names, key and sshd servers; wait for ssh."""
        self.down()
        for tool in ("ip", "tc", "ssh", "ssh-keygen", "/usr/sbin/sshd"):
            if not shutil.which(tool):
                raise BedSetupError(f"{tool} is missing (make test-multihost installs "
                                   f"iproute2 and openssh-server)")
        os.makedirs(self.private, exist_ok=True)
        try:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        except BedSetupError as err:
            raise BedSetupError(f"cannot create network devices here (needs root and "
                               f"CAP_NET_ADMIN): {err}") from None
        _run("ip", "addr", "add", f"{PREFIX}.254/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for n, host in enumerate(HOSTS, 1):
            self._add_host(host, f"rgv{n}")
        with open("/etc/hosts", "a") as hosts:
            for host in HOSTS:
                hosts.write(f"{address(host)} {host} {TAG}\n")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key)
        shutil.copy(self.key + ".pub", os.path.join(self.state, "authorized_keys"))
        os.makedirs("/run/sshd", exist_ok=True)
        for host in HOSTS:
            self._start_sshd(host)
        with open(self.hostfile, "w") as out:
            out.writelines(f"{host} slots=1\n" for host in HOSTS)
        for host in HOSTS:
            self._wait_for_ssh(host)

    def _add_host(self, host, outer):
        ns = namespace(host)
        try:
            _run("ip", "netns", "add", ns)
        except BedSetupError as err:
            raise BedSetupError(f"cannot create network namespaces here: {err}") from None
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", IFACE, "netns", ns)
        _run("ip", "link", "set", outer, "master", BRIDGE, "up")
        in_host(host, "ip", "addr", "add", f"{address(host)}/24", "dev", IFACE)
        in_host(host, "ip", "link", "set", IFACE, "up")
        in_host(host, "ip", "link", "set", "lo", "up")

    def _start_sshd(self, host):
        keyfile = os.path.join(self.state, f"host_key_{host}")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keyfile)
        config = os.path.join(self.state, f"sshd_{host}.conf")
        with open(config, "w") as out:
            out.write("\n".join([
                f"ListenAddress {address(host)}", "Port 22", f"HostKey {keyfile}",
                f"PidFile {self.state}/sshd_{host}.pid",
                f"AuthorizedKeysFile {self.state}/authorized_keys",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
                "PrintMotd no", "MaxStartups 100", ""]))
        # Its own UTS namespace, so that the host knows its name (Gloo resolves it), and its
        # own mount namespace with an empty tmpfs at self.private (a node's local disk).
        log = os.path.join(self.state, f"sshd_{host}.log")
        in_host(host, "unshare", "--uts", "--mount", "sh", "-c",
                f"hostname {host} && mount -t tmpfs tmpfs {self.private} && "
                f"exec /usr/sbin/sshd -f {config} -E {log}")

    def ssh_command(self, host, command: str, timeout_s: int = 5):
        """The argv of ``ssh`` running ``command`` on ``host`` with the test key."""
        return ["ssh", "-i", self.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={self.state}/known_hosts", "-o",
                f"ConnectTimeout={timeout_s}", host, command]

    def _wait_for_ssh(self, host, timeout=30.0):
        deadline = time.time() + timeout
        while True:
            result = _run(*self.ssh_command(host, "true"), check=False)
            if result.returncode == 0:
                return
            if time.time() > deadline:
                raise BedSetupError(f"sshd on {host} does not answer: {result.stderr.strip()}")
            time.sleep(0.2)

    def shape(self, rate_mbit: float):
        """Limit each host's outgoing traffic to ``rate_mbit`` Mbit/s (tc token bucket)."""
        burst = max(64 * 1024, int(rate_mbit * 1e6 / 8 / 250))   # 4 ms of traffic
        for host in HOSTS:
            in_host(host, "tc", "qdisc", "replace", "dev", IFACE, "root", "tbf", "rate",
                    f"{rate_mbit}mbit", "burst", str(burst), "latency", "100ms")

    def unshape(self):
        """Remove the bandwidth limits."""
        for host in HOSTS:
            in_host(host, "tc", "qdisc", "del", "dev", IFACE, "root", check=False)

    def down(self):
        """Stop everything in the namespaces and remove them, the bridge and the names."""
        for host in HOSTS:
            for pid in pids_in(host):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _run("ip", "netns", "del", namespace(host), check=False)
        for n in range(1, len(HOSTS) + 1):
            _run("ip", "link", "del", f"rgv{n}", check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        try:
            with open("/etc/hosts") as hosts:
                lines = hosts.readlines()
            kept = [line for line in lines if TAG not in line]
            if kept != lines:
                with open("/etc/hosts", "w") as hosts:
                    hosts.writelines(kept)
        except OSError:
            pass
        # horovodrun's ssh records host keys in ~/.ssh/known_hosts; each run makes new ones.
        known = os.path.expanduser("~/.ssh/known_hosts")
        if os.path.exists(known):
            for host in HOSTS:
                for name in (host, address(host)):
                    _run("ssh-keygen", "-q", "-f", known, "-R", name, check=False)
        shutil.rmtree(self.state, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Set up or remove the two-host test bed.")
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args(argv)
    bed = TwoHosts()
    if args.action == "down":
        bed.down()
        return 0
    try:
        bed.up()
    except BedSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        bed.down()
        return 1
    print(f"hosts up: {', '.join(HOSTS)} on interface {IFACE}\nhostfile: {bed.hostfile}\n"
          f"ssh key:  {bed.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
