"""Shared fixtures: one tiny cached shapes dataset for the whole session (and across runs)."""
from __future__ import annotations

import pytest

from iuq_lite.data import shapes

# tests/browser/ drives JupyterLab in Chromium (minutes): its own step, `make browser`, never part of `make unit`
collect_ignore = ["browser"]


@pytest.fixture(scope="session")
def tiny_data() -> dict[str, str]:
    """The `tiny` preset's shapes split (64 train / 32 val, 64 px) in the default cache dir, so reruns reuse it.

    Keys: root, train_images, train_ann, val_images, val_ann.
    """
    return shapes.ensure_dataset(num_train=64, num_val=32, image_size=64, seed=0)
