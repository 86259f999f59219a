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


@pytest.mark.timeout(120)
def test_pillow_decodes_jpegs_after_the_horovod_context_starts(tmp_path):
    """libmxnet.so exports a libjpeg under Pillow's symbol names; Horovod loads it globally, and
    a Pillow loaded afterwards decoded no JPEG ("broken data stream"). dist.py is loaded alone
    here, so nothing else imported Pillow first, as in a user's own script."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photo = tmp_path / "photo.jpg"
    Image.fromarray(load_sample_images().images[0]).save(photo, quality=90)
    import resnest_gluon.training.dist as dist
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("dist_alone", {dist.__file__!r})
        dist = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(dist)
        assert "PIL.Image" not in sys.modules
        context = dist.HorovodContext()
        from PIL import Image
        image = Image.open({str(photo)!r})
        image.draft("RGB", (160, 100))   # DCT scaling, as the loader decodes
        image.load()
        print("decoded", context.size, image.size)
    """)
    job = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=110)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "decoded 1 (160, 107)" in job.stdout


@pytest.mark.timeout(120)
def test_a_pillow_bound_to_libmxnets_libjpeg_is_named_not_blamed_on_the_data(tmp_path):
    """A script that imports horovod.mxnet before anything else still loads Pillow late: the
    loader then says why no JPEG decodes, in one line, instead of skipping every record as
    damaged."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from resnest_gluon.data import RecordWriter, pack_record
    photo = tmp_path / "photo.jpg"
    Image.fromarray(load_sample_images().images[1]).save(photo, quality=90)
    writer = RecordWriter(str(tmp_path / "s.rec"))
    for label in (0, 1):
        writer.write(pack_record(label, photo.read_bytes()))
    writer.commit()
    code = textwrap.dedent(f"""
        import horovod.mxnet          # first, before Pillow
        import numpy as np
        from resnest_gluon.data import BatchLoader, EvalTransform, ShardSet
        shards = ShardSet({str(tmp_path / "s.rec")!r})
        for workers in (0, 2):
            try:
                list(BatchLoader(shards, [np.arange(2)], EvalTransform(32), 32, classes=3,
                                 workers=workers))
                print("loaded", workers)
            except Exception as err:
                print(workers, type(err).__name__, "|", str(err).replace("\\n", " ")[:300])
    """)
    job = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=110)
    assert job.returncode == 0, job.stderr[-2000:]
    lines = job.stdout.strip().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["0 DataError", "2 DataError"]
    for line in lines:
        assert "Pillow cannot decode any JPEG in this process" in line, line
        assert "import PIL.Image" in line and "Traceback" not in line
