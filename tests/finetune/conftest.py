"""Fixtures of the fine-tuning tests."""

import numpy as np
import pytest

from snncc.ir import save
from tests.finetune.tiny import converted_cnn, training_set


@pytest.fixture
def files(tmp_path):
    """The tiny converted CNN as a .snn file and its training set as an .npz of uint8 images: (snn, data)."""
    snn = save(converted_cnn(), tmp_path / "tiny.snn")
    x, y = training_set()
    data = tmp_path / "train.npz"
    np.savez(data, x=x.astype(np.uint8), y=y)
    return snn, data
