"""Shared fixtures: seeded RNGs and real photos from scikit-learn."""
import mxnet as mx
import numpy as np
import pytest


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
