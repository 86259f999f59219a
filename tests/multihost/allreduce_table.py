"""The measured-versus-modelled allreduce table of docs/scaling.md, section 7 (root).

Sets up the two hosts (:mod:`twohosts`), measures ResNeSt-50's gradient allreduce between
them with ``resnest-bench-allreduce`` under ``horovodrun``, first on the unlimited link (the
hosts' own floor for the ring), then with each host's outgoing bandwidth limited by
``tc tbf`` to each of ``--rates`` Mbit/s, and prints the rows with the model's prediction::

    python tests/multihost/allreduce_table.py --rates 1000 2000 5000
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from twohosts import IFACE, TwoHosts

from resnest_gluon.commands.bench_allreduce import format_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench(bed, *args):
    """Rows of one ``resnest-bench-allreduce`` run over the two hosts."""
    with tempfile.NamedTemporaryFile(suffix=".json", dir=bed.state) as out:
        horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
        command = [horovodrun, "-np", "2", "-hostfile", bed.hostfile, "--network-interface",
                   IFACE, "--ssh-identity-file", bed.key, sys.executable,
                   os.path.join(ROOT, "scripts", "bench_allreduce.py"), "--json", out.name,
                   *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise SystemExit(f"bench failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        with open(out.name) as rows:
            return json.load(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 2000, 5000],
                        help="link limits in Mbit/s")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with TwoHosts() as bed:
        unlimited = bench(bed, "--repeats", str(args.repeats))
        floors = [f"{row['compression']}={row['ring_ms']:.1f}" for row in unlimited]
        rows = []
        for rate in args.rates:
            bed.shape(rate)
            rows += bench(bed, "--repeats", str(args.repeats), "--bandwidth-gbit",
                          f"{rate / 1000:g}", "--host-floor-ms", *floors)
    print(format_rows(unlimited + rows))
    print(f"\n(unlimited link first: its ring times, {', '.join(floors)} ms, are the hosts' "
          f"floor in the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
