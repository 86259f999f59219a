"""Two real hosts (network namespaces with sshd, :mod:`twohosts`): training launched over ssh,
a remote rank killed and the job resumed, a wrong interface and an unreachable host.

Run by ``make test-multihost`` (root: it creates network devices). If the hosts cannot be made
here, every test fails saying why; none is skipped.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
from runs import (
    HOROVODRUN,
    ROOT,
    TRAIN,
    assert_ranks_identical,
    newest_meta,
    read_text,
    tiny,
    wait_for,
    write_rank_dumper,
)
from twohosts import HOSTS, IFACE, PREFIX, BedSetupError, TwoHosts, pids_in

from resnest_gluon.training.metrics import read_metrics

LAUNCH = os.path.join(ROOT, "scripts", "launch.py")


@pytest.fixture(scope="module")
def hosts():
    bed = TwoHosts()
    try:
        bed.up()
    except BedSetupError as err:
        bed.down()
        pytest.fail(f"the two hosts cannot be set up on this machine: {err}")
    yield bed
    bed.down()


def _launch(hosts, *args, hostfile=None):
    return [sys.executable, LAUNCH, "-np", "2", "--hostfile", hostfile or hosts.hostfile,
            "--ssh-identity-file", hosts.key, *args]


def test_horovodrun_over_ssh_trains_identically_on_both_hosts(digits, hosts, tmp_path):
    """``horovodrun -hostfile --network-interface`` from this machine: one rank per host, the
    same parameters on both, every validation image counted once, checkpoints written."""
    workdir = tmp_path / "run"
    result = subprocess.run(
        [HOROVODRUN, "-np", "2", "-hostfile", hosts.hostfile, "--network-interface", IFACE,
         "--ssh-identity-file", hosts.key, sys.executable, write_rank_dumper(tmp_path),
         str(workdir), *tiny(digits, "train.epochs=2")],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert assert_ranks_identical(workdir) == list(HOSTS)
    epochs = [r for r in read_metrics(str(workdir / "metrics.jsonl")) if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == [3, 6]          # global batch 32 over 96 images
    assert all(r["val_images"] == 37 for r in epochs)     # 18 + 19, each image once
    assert newest_meta(workdir)["global_step"] == 6


def _rank_pids(host, workdir):
    found = []
    for pid in pids_in(host):
        try:
            cmdline = read_text(f"/proc/{pid}/cmdline")
        except OSError:
            continue
        if TRAIN in cmdline and str(workdir) in cmdline:
            found.append(pid)
    return found


def test_a_killed_remote_rank_ends_the_job_naming_its_host_and_the_relaunch_resumes(
        digits, hosts, tmp_path):
    workdir = tmp_path / "run"
    command = _launch(hosts, "--network-interface", IFACE, "--", sys.executable, TRAIN,
                      "--workdir", str(workdir), *tiny(digits, "train.epochs=5"))
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=ROOT)
    try:
        wait_for(lambda: (newest_meta(workdir) or {}).get("global_step", 0) >= 3 or job.poll(),
                 "the first checkpoint", timeout=300)
        pids = _rank_pids(HOSTS[1], workdir)
        assert pids, f"rank 1 not found on {HOSTS[1]}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed = time.time()
        output = job.communicate(timeout=120)[0]
        ended_after = time.time() - killed
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 1, output[-3000:]
    assert ended_after < 60
    last = output.strip().splitlines()[-1]
    # ssh reports a remote process killed by a signal as exit code 255
    assert f"rank 1 on host {HOSTS[1]} ended first (exit code 255" in last, last
    assert "killed by a signal" in last and "resumes" in last, last
    assert not [line for line in output.splitlines() if line.startswith("Traceback")]
    assert not any(_rank_pids(host, workdir) for host in HOSTS)   # nothing left running
    resumed_from = newest_meta(workdir)["global_step"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "resumed from" in result.stdout and f"step {resumed_from})" in result.stdout
    epochs = [r for r in read_metrics(str(workdir / "metrics.jsonl")) if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs][-1] == 15 and newest_meta(workdir)["global_step"] == 15


@pytest.mark.parametrize("iface, message", [
    ("eth7", "this machine has no network interface 'eth7'"),
    ("eth0", f"host {HOSTS[0]} has no network interface 'eth0' (it has: lo, {IFACE})"),
])
def test_a_wrong_interface_is_one_clear_line(hosts, tmp_path, iface, message):
    started = time.time()
    result = subprocess.run(_launch(hosts, "--network-interface", iface, "--", "true"),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert time.time() - started < 30
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_an_unreachable_host_is_one_clear_line(hosts, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{HOSTS[0]} slots=1\n{PREFIX}.9 slots=1   # nobody has this address\n")
    started = time.time()
    result = subprocess.run(_launch(hosts, "--network-interface", IFACE, "--", "true",
                                    hostfile=str(hostfile)),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert time.time() - started < 30
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach host {PREFIX}.9 by ssh" in lines[0], lines


def test_a_work_directory_the_hosts_do_not_share_is_refused(hosts):
    """Each host has its own empty filesystem at ``hosts.private`` (a tmpfs in its mount
    namespace), like a node's local disk: a work directory there is refused before the job
    starts, and one on the shared filesystem passes."""
    command = _launch(hosts, "--network-interface", IFACE, "--check-only", "--", "python",
                      "train.py", "--workdir")
    result = subprocess.run(command + [os.path.join(hosts.private, "run")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert (f"host {HOSTS[0]} does not see the work directory {hosts.private}/run" in lines[0]
            and "shared filesystem" in lines[0]
            and "[1 more host failed the check too]" in lines[0]), lines
    result = subprocess.run(command + [os.path.join(hosts.state, "shared-run")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "2 hosts ready" in result.stderr, result.stderr


def test_the_allreduce_benchmark_sees_the_shaped_link(hosts):
    """ResNeSt-50's gradient between the hosts: its bytes are the model's, and limiting the
    link to 1 Gbit/s (tc tbf) makes the float32 allreduce much slower than unlimited (about
    0.97 against 0.2 s here; the check is 1.5x)."""
    from allreduce_table import bench
    try:
        unlimited = bench(hosts, "--repeats", "1", "--compression", "none")
        hosts.shape(1000)
        limited = bench(hosts, "--repeats", "1", "--compression", "none",
                        "--bandwidth-gbit", "1")
    finally:
        hosts.unshape()
    from resnest_gluon.training.scaling import model_inputs
    assert limited[0]["gradient_mb"] == 4 * model_inputs("resnest50").trainable_params / 1e6
    assert limited[0]["measured_ms"] > 1.5 * unlimited[0]["measured_ms"]
    assert limited[0]["modelled_ms"] > 880      # 8 x 110 MB / (1 Gbit/s x 0.956) and more


def test_the_slurm_script_trains_on_the_allocations_hosts(digits, hosts, tmp_path):
    """scripts/slurm_train.sbatch as sbatch runs it on an allocation's first node: the hosts
    come from SLURM_JOB_NODELIST (rg-host[1-2]), one process each."""
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  epochs: 1\n")
    env = dict(os.environ, SLURM_JOB_NODELIST="rg-host[1-2]", SLURM_JOB_NUM_NODES="2",
               SLURM_GPUS_ON_NODE="1", IFACE=IFACE, SSH_IDENTITY_FILE=hosts.key,
               VENV=os.path.dirname(os.path.dirname(sys.executable)))
    workdir = tmp_path / "run"
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm_train.sbatch"),
                             str(config), str(workdir), *tiny(digits, "train.epochs=1")],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"2 hosts ready ({HOSTS[0]}:1, {HOSTS[1]}:1) on {IFACE}" in result.stderr
    assert "2 worker(s) (horovod)" in result.stdout
    assert newest_meta(workdir)["global_step"] == 3
