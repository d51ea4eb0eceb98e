"""Data sets and input scaling.

:func:`load_dataset` reads IDX directories, ``.npz`` archives, ``.npy`` pairs, image folders and CIFAR binary files
into ``(x, y)`` (with ``.info`` describing what it found); :class:`InputScaling` is the recorded affine map from
stored values to the model's input. One module per format family: :mod:`~snncc.data.idx`,
:mod:`~snncc.data.arrays`, :mod:`~snncc.data.images`, :mod:`~snncc.data.cifar`.
"""

from snncc.data.idx import read_idx
from snncc.data.loader import Dataset, DatasetInfo, check_against_model, check_sample_shape, load_dataset, sample_fits
from snncc.data.scaling import PRESETS, InputScaling

__all__ = ["PRESETS", "Dataset", "DatasetInfo", "InputScaling", "check_against_model", "check_sample_shape",
           "load_dataset", "read_idx", "sample_fits"]
