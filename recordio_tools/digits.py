"""The built-in dataset: scikit-learn's real handwritten digits as RecordIO shards.

1,797 8x8 grey images (0..16) of ten digits, upscaled with bicubic interpolation to RGB PNGs,
split into a training and a validation set (stratified, seeded) and packed with
:func:`recordio_tools.pack.pack` like any ImageNet tree.
"""
import os

import numpy as np
from PIL import Image

from .pack import pack

__all__ = ["make_digits"]


def make_digits(folder: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                shards: int = 2, workers: int = 1):
    """Write ``folder/images/{train,val}/<digit>/*.png`` and pack them.

    Returns
    -------
    dict
        ``train`` and ``val`` shard prefixes, ``classes`` file, record counts.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(seed)
    split = {"train": [], "val": []}
    for label in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = int(round(len(members) * val_fraction))
        split["val"] += [(i, label) for i in members[:n_val]]
        split["train"] += [(i, label) for i in members[n_val:]]
    result = {}
    for part, members in split.items():
        items = []
        for index, label in members:
            folder_out = os.path.join(folder, "images", part, str(label))
            os.makedirs(folder_out, exist_ok=True)
            path = os.path.join(folder_out, f"{index:04d}.png")
            if not os.path.exists(path):
                grey = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
                img = Image.fromarray(grey).resize((size, size), Image.BICUBIC).convert("RGB")
                img.save(path)
            items.append((path, label))
        prefix = os.path.join(folder, part)
        manifest = pack(items, [str(d) for d in range(10)], prefix,
                        num_shards=shards if part == "train" else 1, workers=workers,
                        progress=False, seed=seed)
        result[part] = prefix
        result[f"{part}_records"] = manifest["records"]
    result["classes"] = os.path.join(folder, "train.classes.tsv")
    return result
