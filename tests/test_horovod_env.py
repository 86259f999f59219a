"""The environment's Horovod is built with MXNet and Gloo and runs a real 2-worker job."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

HOROVODRUN = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable),
                                                         "horovodrun")


def test_check_build_lists_mxnet_and_gloo():
    out = subprocess.run([HOROVODRUN, "--check-build"], check=True, capture_output=True,
                         text=True).stdout
    assert "[X] MXNet" in out and "[X] Gloo" in out


@pytest.mark.timeout(300)
def test_two_workers_broadcast_a_resnest(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import horovod.mxnet as hvd, mxnet as mx, numpy as np, sys
        from resnest_gluon import get_model
        hvd.init()
        mx.random.seed(hvd.rank())                      # different weights on each rank ...
        net = get_model("resnest14", classes=3)
        net.initialize(mx.init.Xavier())
        hvd.broadcast_parameters(net.collect_params(), root_rank=0)   # ... until broadcast
        w = net.fc.weight.data()
        total = hvd.allreduce(w, average=False, name="w")
        assert np.allclose(total.asnumpy(), 2 * w.asnumpy())
        np.save(sys.argv[1] + "/w%d.npy" % hvd.rank(), w.asnumpy())
    """))
    job = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable,
                          str(script), str(tmp_path)], timeout=280, capture_output=True, text=True)
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]   # the job's own words
    import numpy as np
    np.testing.assert_array_equal(np.load(tmp_path / "w0.npy"), np.load(tmp_path / "w1.npy"))
