"""float16 AMP graphs stay float16 where the activations are (issue: GPU readiness).

MXNet runs AMP's float16 only on GPUs, but its graph and the dtype of every tensor in it can
be built and inferred on a CPU: ResNeSt-50 is traced after ``amp.init("float16")`` (in a
process of its own: AMP patches MXNet's operators) and every activation-sized tensor that
stays float32 is listed."""
import json
import subprocess
import sys

import pytest

CENSUS = r"""
import json, sys
import mxnet as mx
import numpy as np
from mxnet.contrib import amp
amp.init("float16")
from resnest_gluon import get_model
product, drop = sys.argv[1], float(sys.argv[2])
net = get_model("resnest50", attention_product=product, dropblock_prob=drop)
net.initialize()
net.hybridize()
internals = net(mx.sym.var("data")).get_internals()
_, shapes, _ = internals.infer_shape(data=(64, 3, 224, 224))
_, types, _ = internals.infer_type(data="float32")
smallest_activation = 64 * 2048 * 7 * 7
print(json.dumps([[name, int(np.prod(shape))] for name, shape, dtype
                  in zip(internals.list_outputs(), shapes, types)
                  if dtype == np.float32 and np.prod(shape) >= smallest_activation
                  and name != "data"]))
"""


def _float32_activations(product, dropblock):
    done = subprocess.run([sys.executable, "-c", CENSUS, product, str(dropblock)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("product", ["batch_dot", "broadcast_mul"])
def test_no_activation_is_float32_in_split_attention_or_the_residual_adds(product):
    # before the attention weights were narrowed: 149 (batch_dot) and 133 (broadcast_mul)
    # such tensors, 1.6 and 1.3 billion float32 elements per batch of 64
    assert _float32_activations(product, 0.0) == []


def test_with_dropblock_only_its_kept_unit_count_is_float32():
    # before: 322 tensors (2.4 billion elements), the residual adds after DropBlock included
    found = _float32_activations("broadcast_mul", 0.1)
    outside = [name for name, _ in found if "_dropblock" not in name]
    assert outside == []
    # per DropBlock layer (16 of them) at most the count's float32 copy and AMP's cast of it
    assert len(found) <= 2 * 16
