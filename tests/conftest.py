"""Shared fixtures: seeded RNGs, real photos and handwritten digits from scikit-learn."""
import os

import mxnet as mx
import numpy as np
import pytest

# The two-host tests build network namespaces as root: `make test-multihost` runs them.
collect_ignore = [] if os.environ.get("RESNEST_MULTIHOST") == "1" else ["multihost"]


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def photos():
    """Four real photo crops (scikit-learn's sample images), NCHW float32, normalised, 64x64."""
    from sklearn.datasets import load_sample_images
    images = load_sample_images().images          # china.jpg, flower.jpg: 427x640x3 uint8
    crops = [img[y:y + 256, x:x + 256] for img in images for (y, x) in ((0, 0), (150, 300))]
    batch = mx.nd.array(np.stack(crops)).transpose((0, 3, 1, 2))
    batch = mx.nd.contrib.BilinearResize2D(batch, height=64, width=64)
    mean = mx.nd.array([123.7, 116.3, 103.5]).reshape((1, 3, 1, 1))
    std = mx.nd.array([58.4, 57.1, 57.4]).reshape((1, 3, 1, 1))
    return ((batch - mean) / std).astype("float32")


def write_image_tree(root, classes=3, per_class=5, size=(400, 300), seed=0):
    """ImageNet-style tree of real photo crops: root/c<k>/img<i>.jpg (different crops)."""
    import os

    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"c{c}"), exist_ok=True)
        for i in range(per_class):
            img = photos[(c + i) % len(photos)]
            y = int(rng.integers(0, img.shape[0] - size[1]))
            x = int(rng.integers(0, img.shape[1] - size[0]))
            crop = img[y:y + size[1], x:x + size[0]]
            Image.fromarray(crop).save(os.path.join(root, f"c{c}", f"img{i}.jpg"), quality=90)
    return root


@pytest.fixture
def photo_tree(tmp_path):
    return write_image_tree(str(tmp_path / "tree"))


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """96 training and 37 validation digits (32x32 RGB PNGs) packed as shards."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from recordio_tools.pack import pack
    folder = tmp_path_factory.mktemp("digits")
    data = load_digits()
    items = []
    for i in range(96 + 37):
        path = str(folder / f"{i:04d}.png")
        grey = (data.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(grey).resize((32, 32), Image.BICUBIC).convert("RGB").save(path)
        items.append((path, int(data.target[i])))
    classes = [str(d) for d in range(10)]
    pack(items[:96], classes, str(folder / "train"), num_shards=2, workers=1, progress=False)
    pack(items[96:], classes, str(folder / "val"), num_shards=1, workers=1, progress=False)
    return str(folder / "train"), str(folder / "val")
