"""The compiled split-attention operator: how it is built, shared and replaced.

``resnest_radix_sum`` (resnest_gluon/models/csrc/radix_sum.cc) is compiled against the
installed MXNet on first use and cached. Its values and gradients are checked against MXNet's
own formulations in tests/test_splat.py; here: concurrent first builds, a machine without a
compiler, and the command that builds it ahead. Each case runs in a fresh interpreter with
its own cache folder, since a process loads the library once.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

_USE = textwrap.dedent("""
    import logging, sys
    import mxnet as mx
    from mxnet import autograd
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from resnest_gluon.models.splat import SplitAttentionConv, implementations_for
    choice = implementations_for("cpu")["attention_product"]
    block = SplitAttentionConv(8, radix=2, in_channels=16, attention_product=choice)
    block.initialize()
    block.hybridize(static_alloc=True)
    x = mx.nd.random.uniform(shape=(2, 16, 6, 5))
    x.attach_grad()
    with autograd.record():
        y = block(x)
    y.backward()
    mx.nd.waitall()
    print("product", choice, y.shape, float(x.grad.abs().sum().asscalar()) > 0)
""")


_WINOGRAD = textwrap.dedent("""
    from resnest_gluon.models.splat import GroupedConv2D
    kind = implementations_for("cpu")["grouped_conv"]
    conv = GroupedConv2D(32, 3, 1, 1, groups=2, use_bias=False, in_channels=32,
                         grouped_conv=kind)
    conv.initialize()
    conv.hybridize(static_alloc=True)
    x = mx.nd.random.uniform(shape=(2, 32, 6, 5))
    x.attach_grad()
    with autograd.record():
        y = conv(x)
    y.backward()
    mx.nd.waitall()
    print("conv", kind, y.shape, float(x.grad.abs().sum().asscalar()) > 0)
""")


def _run(code, cache, env_extra=None, args=()):
    env = dict(os.environ, RESNEST_GLUON_EXTENSIONS=str(cache), **(env_extra or {}))
    return subprocess.Popen([sys.executable, *(["-c", code] if code else []), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def test_two_processes_building_at_once_share_one_library(tmp_path):
    from resnest_gluon.models.extension import winograd_conv_available
    has_winograd = winograd_conv_available()
    started = [_run(_USE + _WINOGRAD, tmp_path) for _ in range(2)]
    compilations = {"split-attention operator": 0, "Winograd convolution": 0}
    for code, out, err in map(_finish, started):
        assert code == 0, err[-2000:]
        assert "product radix_sum (2, 8, 6, 5) True" in out
        assert "WARNING" not in err
        for what in compilations:
            compilations[what] += err.count(f"compiling the {what}")
    # the other process waited on the lock, then loaded
    assert compilations == {"split-attention operator": 1,
                            "Winograd convolution": int(has_winograd)}
    libraries = sorted(n for n in os.listdir(tmp_path) if n.endswith(".so"))  # none partial
    assert [n.split("-")[0] for n in libraries] == (["libresnest_ops"] + ["libresnest_winograd"]
                                                    * has_winograd), libraries


def test_without_a_compiler_split_attention_falls_back_with_one_warning(tmp_path):
    code, out, err = _finish(_run(_USE, tmp_path, {"CXX": "/nonexistent/c++"}))
    assert code == 0, err[-2000:]
    assert "product batch_dot (2, 8, 6, 5) True" in out
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "uses MXNet's batch_dot" in warnings[0]
    assert "compiling radix_sum.cc failed" in warnings[0]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".so")]


def test_asking_for_the_compiled_operator_without_a_compiler_is_one_clear_error(tmp_path):
    code = textwrap.dedent("""
        from resnest_gluon.models import get_model
        from resnest_gluon.models.extension import ExtensionError
        try:
            get_model("resnest14", attention_product="radix_sum")
        except ExtensionError as err:
            print("error:", err)
    """)
    status, out, err = _finish(_run(code, tmp_path, {"CXX": "false"}))
    assert status == 0, err[-2000:]
    assert out.startswith("error: compiling radix_sum.cc failed") and out.count("\n") == 1


@pytest.mark.parametrize("compiler,status", [(None, 0), ("/nonexistent/c++", 1)])
def test_the_build_command_reports_in_one_line(tmp_path, compiler, status):
    env = {"CXX": compiler} if compiler else {}
    code, out, err = _finish(_run(None, tmp_path, env,
                                  ["-m", "resnest_gluon.models.extension"]))
    assert code == status
    lines = err.strip().splitlines()
    if status == 0:
        assert lines[-2].startswith("split-attention operator ready: ")
        assert lines[-1].startswith(("Winograd convolution ready: ",
                                     "Winograd convolution not used here: "))
    else:
        assert lines[-1].startswith("error: ")


def test_it_loads_after_horovods_mxnet_module(tmp_path):
    """Horovod's MXNet module, loaded globally, carries other definitions of the extension
    API's C++ symbols; the library binds to its own (-Bsymbolic), or its constructor crashed
    (SIGFPE) in every rank of a horovodrun job."""
    # not imported here: horovod.mxnet breaks Pillow's JPEG codec in the importing process
    # (Pillow's libjpeg calls bind to libmxnet's), and later tests decode photos
    assert importlib.util.find_spec("horovod") is not None, "make env installs Horovod"
    code = "import horovod.mxnet\n" + _USE + _WINOGRAD
    status, out, err = _finish(_run(code, tmp_path))
    assert status == 0, err[-2000:]
    assert "product radix_sum (2, 8, 6, 5) True" in out
    # the Winograd library links a oneDNN of its own beside MXNet's
    from resnest_gluon.models.extension import winograd_conv_available
    kind = "winograd" if winograd_conv_available() else "split-narrow"
    assert f"conv {kind} (2, 32, 6, 5) True" in out


def test_the_library_is_readable_by_other_users_and_no_partial_file_is_left(tmp_path):
    code, out, err = _finish(_run(_USE, tmp_path))
    assert code == 0, err[-2000:]
    libraries = [n for n in os.listdir(tmp_path) if n.endswith(".so")]
    assert libraries      # (the Winograd library too, where this CPU runs it)
    for library in libraries:
        assert os.stat(tmp_path / library).st_mode & 0o055 == 0o055   # group and others: r-x
    empty = tmp_path / "empty"
    code, out, err = _finish(_run(_USE, empty, {"CXX": "", "PATH": "/nonexistent"}))
    assert code == 0, err[-2000:]
    assert "no C++ compiler found" in err and "product batch_dot" in out
    assert os.listdir(empty) == [] or all(n.endswith(".lock") for n in os.listdir(empty))


def test_after_amp_init_it_is_not_loaded_and_amp_stays_on(tmp_path):
    """Loading re-creates mx.nd / mx.sym, which would drop AMP's wrapped operators."""
    code = textwrap.dedent("""
        import logging
        import mxnet as mx
        from mxnet.contrib import amp
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        amp.init(target_dtype="bfloat16")
        from resnest_gluon.models import get_model
        from resnest_gluon.models.extension import ExtensionError
        from resnest_gluon.models.splat import implementations_for
        print("auto", implementations_for("cpu")["attention_product"])
        try:
            get_model("resnest14", attention_product="radix_sum")
        except ExtensionError as err:
            print("error:", err)
        x, w = mx.nd.ones((1, 3, 8, 8)), mx.nd.ones((4, 3, 3, 3))
        out = mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=4, no_bias=True)
        print("amp still on", out.dtype != "float32")     # AMP's bfloat16 convolution
    """)
    status, out, err = _finish(_run(code, tmp_path))
    assert status == 0, err[-2000:]
    assert "auto batch_dot" in out and "amp still on True" in out
    assert "error: the split-attention operator cannot be loaded after" in out


def test_a_changed_shared_header_gives_a_new_library_name(tmp_path):
    """The operators include csrc/op_common.h: editing it must not load a library cached from
    the old header."""
    from resnest_gluon.native import library_path
    source, header = tmp_path / "op.cc", tmp_path / "op_common.h"
    source.write_text('#include "op_common.h"\n')
    header.write_text("inline int answer() { return 41; }\n")
    before = library_path("op", [str(source)], ["-O3"], cache_dir=str(tmp_path),
                          headers=[str(header)])
    assert before == library_path("op", [str(source)], ["-O3"], cache_dir=str(tmp_path),
                                  headers=[str(header)])
    header.write_text("inline int answer() { return 42; }\n")
    after = library_path("op", [str(source)], ["-O3"], cache_dir=str(tmp_path),
                         headers=[str(header)])
    assert after != before and os.path.dirname(after) == str(tmp_path)
    # and the operators' own specification names the header
    from resnest_gluon.models import extension
    for op in (extension.RADIX_SUM_OP, extension.CONV3X3_OP):
        try:
            spec = extension._build_spec(extension._OPERATORS[op])
        except extension.ExtensionError:
            continue          # (no oneDNN wheel on this machine: its library is not built)
        assert any(path.endswith("op_common.h") for path in spec["headers"])
