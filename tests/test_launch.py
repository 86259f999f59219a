"""resnest-launch without hosts: host lists, Slurm node lists, rank placement, exit codes and
the errors it stops with (the two-host runs are in tests/multihost)."""
import json
import os
import subprocess
import sys

import pytest
from runs import ROOT

from resnest_gluon.launch import (
    Host,
    LaunchError,
    assign_ranks,
    check_hosts,
    describe_exit,
    expand_nodelist,
    failed_rank,
    parse_host_list,
    read_hostfile,
    slurm_hosts,
    stop_leftovers,
)


def test_hostfile_with_comments_blank_lines_and_default_slots(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# the GPU nodes\nnode1 slots=8\n\n  node2   slots = 4  # half\nnode3\n")
    assert read_hostfile(str(path)) == [Host("node1", 8), Host("node2", 4), Host("node3", 1)]


@pytest.mark.parametrize("text, message", [
    ("node1 slots=8\nnode2 slots=zero\n", ":2: expected HOST slots=N with N >= 1"),
    ("node1 slots=0\n", ":1: expected HOST slots=N with N >= 1"),
    ("node1 gpus=8\n", ":1: expected 'HOST slots=N', got 'node1 gpus=8'"),
    ("node1 slots=2\nnode1 slots=2\n", "names node1 twice"),
    ("# nothing\n\n", "names no hosts"),
])
def test_bad_hostfiles_name_the_line(tmp_path, text, message):
    path = tmp_path / "hosts"
    path.write_text(text)
    with pytest.raises(LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_hostfile(str(path))


def test_host_lists_as_horovodrun_takes_them():
    assert parse_host_list("a:2,b:2, c") == [Host("a", 2), Host("b", 2), Host("c", 1)]
    with pytest.raises(LaunchError, match="names no hosts"):
        parse_host_list(" , ")


@pytest.mark.parametrize("nodelist, names", [
    ("gpu01", ["gpu01"]),
    ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("a[9-11]b,c", ["a9b", "a10b", "a11b", "c"]),
])
def test_slurm_node_lists_expand(nodelist, names):
    assert expand_nodelist(nodelist) == names


@pytest.mark.parametrize("nodelist, message", [
    ("gpu[03-01]", "runs backwards"), ("gpu[a-b]", "cannot read 'a-b'"), ("", "names no nodes")])
def test_bad_slurm_node_lists(nodelist, message):
    with pytest.raises(LaunchError, match=message):
        expand_nodelist(nodelist)


def test_slurm_hosts_take_their_slots_from_the_allocation():
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": "8"}
    assert slurm_hosts(env) == [Host("n1", 8), Host("n2", 8)]
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NTASKS_PER_NODE": "4(x2)"}
    assert slurm_hosts(env) == [Host("n1", 4), Host("n2", 4)]
    assert slurm_hosts(env, slots_per_host=2) == [Host("n1", 2), Host("n2", 2)]
    with pytest.raises(LaunchError, match="inside an allocation"):
        slurm_hosts({})


def test_ranks_fill_hosts_in_order_as_horovodrun_places_them():
    hosts = [Host("a", 2), Host("b", 3)]
    assert assign_ranks(hosts, 4) == [(0, "a"), (1, "a"), (2, "b"), (3, "b")]
    with pytest.raises(LaunchError, match="-np 6 needs 6 slots; the hosts have 5"):
        assign_ranks(hosts, 6)


def test_horovodruns_failure_report_and_exit_codes():
    output = ("Process 1 exit with status code 255.\nTerminating remaining workers after "
              "failure of Process 1.\nRuntimeError: Horovod detected ... The first process to "
              "do so was:\nProcess name: 1\nExit code: 255\n")
    assert failed_rank(output) == (1, 255)
    assert failed_rank("all went well") is None
    assert describe_exit(-9) == describe_exit(137) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(1) == "exit code 1"
    assert "ssh session ended without an exit status" in describe_exit(255)


def test_check_hosts_on_this_machine(tmp_path):
    """localhost is probed without ssh: its interfaces and the work directory are seen."""
    check_hosts(["localhost"], iface="lo", workdir=str(tmp_path / "w"))
    assert not list((tmp_path / "w").iterdir())          # the probe's token is removed
    with pytest.raises(LaunchError, match="this machine has no network interface 'nope0'"):
        check_hosts(["localhost"], iface="nope0")


@pytest.mark.parametrize("args, message", [
    (["-np", "2", "-H", "localhost:1", "--", "true"], "-np 2 needs 2 slots"),
    (["-np", "1", "-H", "localhost:1"], "no command to run"),
    (["-np", "1", "--hostfile", "/no/such/hosts", "--", "true"], "/no/such/hosts"),
])
def test_launch_errors_are_one_line(args, message):
    result = subprocess.run([sys.executable, f"{ROOT}/scripts/launch.py", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_local_job_runs_under_horovodrun_and_a_failed_rank_is_named(tmp_path):
    ok = subprocess.run([sys.executable, f"{ROOT}/scripts/launch.py", "-np", "2", "-H",
                         "localhost:2", "--", sys.executable, "-c", "print('hello')"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("hello") == 2
    code = "import os, sys; sys.exit(3 if os.environ['HOROVOD_RANK'] == '1' else 0)"
    bad = subprocess.run([sys.executable, f"{ROOT}/scripts/launch.py", "-np", "2", "-H",
                          "localhost:2", "--", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    last = bad.stderr.strip().splitlines()[-1]
    assert "rank 1 on host localhost ended first (exit code 3)" in last, bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_the_allreduce_benchmark_in_one_process(tmp_path):
    """Without horovodrun the benchmark runs as one worker: nothing crosses a network, the
    model predicts 0, and the float16 cast is still measured."""
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, f"{ROOT}/scripts/bench_allreduce.py", "--model",
                             "resnest14", "--repeats", "1", "--bandwidth-gbit", "1", "--json",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["compression"] for r in rows] == ["none", "fp16"]
    assert rows[0]["gradient_mb"] == pytest.approx(2 * rows[1]["gradient_mb"])
    assert rows[1]["compress_ms"] > 0 and rows[0]["modelled_ms"] == 0
    bad = subprocess.run([sys.executable, f"{ROOT}/scripts/bench_allreduce.py",
                          "--host-floor-ms", "fp32=3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "none=MS or fp16=MS" in bad.stderr


def test_leftover_processes_of_a_launch_are_stopped_and_no_others():
    """What horovodrun leaves running after a failure (ranks whose ssh session ended) is found
    by the launch's id in the process environment and killed; another launch's survive."""
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    ours = subprocess.Popen(sleep, env=dict(os.environ, RESNEST_LAUNCH_ID="job-a"))
    other = subprocess.Popen(sleep, env=dict(os.environ, RESNEST_LAUNCH_ID="job-b"))
    try:
        assert stop_leftovers(["localhost"], "job-a") == {"localhost": 1}
        assert ours.wait(timeout=30) == -9
        assert other.poll() is None
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()
