"""load_dataset on every format, written small in tmp_path, and every error it gives."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from snncc.data import check_against_model, check_sample_shape, load_dataset, read_idx
from snncc.errors import DataError

RNG = np.random.default_rng(0)


def _idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _png(path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _images(n: int, shape=(8, 6, 3)) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, *shape)).astype(np.uint8)


def test_idx_directory_keeps_its_layout_and_describes_itself(tmp_path):
    x, y = _images(5, (4, 4)), np.array([3, 1, 4, 1, 5])
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y)
    data = load_dataset(tmp_path, split="test", limit=3)
    assert data.x.shape == (3, 1, 4, 4) and data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.x[:, 0], x[:3])
    assert data.info.describe() == (f"IDX {tmp_path}: 3 samples of 1x4x4 (1 channel), uint8, values "
                                    f"{x[:3].min()}..{x[:3].max()}, 3 classes (labels 0..4)")
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz"), y)
    with pytest.raises(DataError, match="no IDX file train-images-idx3-ubyte"):
        load_dataset(tmp_path, split="train")


def test_npz_and_npy_pairs_in_every_naming(tmp_path):
    x, y = _images(4, (3, 5, 5)), np.array([0, 1, 2, 1])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    found = [load_dataset(tmp_path / "d.npz")]
    for names in (("x", "y"), ("images", "labels"), ("test_x", "test_y")):
        folder = tmp_path / "_".join(names)
        folder.mkdir()
        np.save(folder / f"{names[0]}.npy", x)
        np.save(folder / f"{names[1]}.npy", y)
        found.append(load_dataset(folder, split="test"))
        found.append(load_dataset(folder / f"{names[1]}.npy"))  # either file of the pair names it
    np.save(tmp_path / "cal_x.npy", x)
    np.save(tmp_path / "cal_y.npy", y)
    found.append(load_dataset(tmp_path / "cal"))  # a prefix
    for data in found:
        np.testing.assert_array_equal(data.x, x)
        np.testing.assert_array_equal(data.y, y)
    assert found[0].info.format == ".npz" and found[1].info.format == ".npy pair"
    features = tmp_path / "f.npz"
    np.savez(features, x=RNG.normal(size=(6, 10)).astype(np.float32), y=np.arange(6))
    assert load_dataset(features).x.shape == (6, 10)


def test_npy_errors(tmp_path):
    np.save(tmp_path / "alone_x.npy", np.zeros((2, 4)))
    with pytest.raises(DataError, match="has no partner alone_y.npy"):
        load_dataset(tmp_path / "alone_x.npy")
    np.save(tmp_path / "whatever.npy", np.zeros((2, 4)))
    with pytest.raises(DataError, match="a single .npy is not a data set"):
        load_dataset(tmp_path / "whatever.npy")
    objects = tmp_path / "obj"
    objects.mkdir()
    np.save(objects / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(objects / "y.npy", np.zeros(1))
    with pytest.raises(DataError, match="never pickled objects"):
        load_dataset(objects)
    np.savez(tmp_path / "bad.npz", images=np.zeros(2))
    with pytest.raises(DataError, match="lacks arrays \\['x', 'y'\\]"):
        load_dataset(tmp_path / "bad.npz")


def test_class_per_subfolder_png_and_jpeg(tmp_path):
    pixels = _images(5)
    for i, (cls, name) in enumerate([("cat", "b.png"), ("cat", "a.png"), ("dog", "c.jpg"), ("ant", "z.jpeg"),
                                     ("dog", "d.png")]):
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.fromarray(pixels[i]).save(tmp_path / cls / name, quality=100)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.info.class_names == ("ant", "cat", "dog") and data.y.tolist() == [0, 1, 1, 2, 2]
    assert data.x.shape == (5, 3, 8, 6)
    np.testing.assert_array_equal(data.x[1], pixels[1].transpose(2, 0, 1))  # cat/a.png: lossless
    with Image.open(tmp_path / "dog" / "c.jpg") as jpeg:  # lossy: what Pillow decodes
        np.testing.assert_array_equal(data.x[3], np.asarray(jpeg.convert("RGB")).transpose(2, 0, 1))
    assert data.info.format == "image folder (class per subfolder)"
    assert "3 classes" in data.info.describe() and "labels from subfolder names" in data.info.describe()
    assert load_dataset(tmp_path, limit=2).y.tolist() == [0, 1]


def test_split_folders_of_class_folders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            (tmp_path / split / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            _png(tmp_path / split / f"c{i % 2}" / f"{i}.png", _images(1, (4, 4))[0])
    assert len(load_dataset(tmp_path, split="train").y) == 3 and len(load_dataset(tmp_path, split="test").y) == 2


def test_flat_folder_with_label_suffixes_or_a_labels_file(tmp_path):
    pixels = _images(3, (4, 4))
    for i, name in enumerate(["img_00_7.png", "img_01_2.png", "img_02_7.png"]):
        _png(tmp_path / name, pixels[i])
    data = load_dataset(tmp_path)
    assert data.y.tolist() == [7, 2, 7] and data.x.shape == (3, 1, 4, 4)
    assert "labels from file name suffixes _<label>" in data.info.describe()
    np.testing.assert_array_equal(data.x[:, 0], pixels)

    named = tmp_path / "named"
    named.mkdir()
    for i, name in enumerate(["x.png", "y.png", "w.png"]):
        _png(named / name, pixels[i])
    (named / "labels.csv").write_text("filename,label\nx.png,dog\ny.png,cat\nw.png,dog\n")
    data = load_dataset(named)
    assert data.info.class_names == ("cat", "dog") and data.y.tolist() == [1, 1, 0]  # files sorted: w, x, y
    (named / "labels.csv").write_text("x.png 3\ny.png 4\n")
    with pytest.raises(DataError, match="has no label for 1 of 3 images, e.g. w.png"):
        load_dataset(named)
    (named / "labels.csv").unlink()
    with pytest.raises(DataError, match="w.png has no _<label> suffix"):
        load_dataset(named)


def test_image_folder_errors_name_the_files_and_the_remedy(tmp_path):
    _png(tmp_path / "a_1.png", _images(1, (8, 8, 3))[0])
    _png(tmp_path / "b_2.png", _images(1, (6, 8, 3))[0])
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    assert "a_1.png is 8x8" in message and "b_2.png is 6x8" in message and "--resize H,W" in message
    assert load_dataset(tmp_path, resize=(6, 6)).x.shape == (2, 3, 6, 6)
    cropped = load_dataset(tmp_path, center_crop=(4, 4))
    assert cropped.x.shape == (2, 3, 4, 4)
    full = load_dataset(tmp_path, resize=(8, 8))
    _png(tmp_path / "c_3.png", _images(1, (8, 8))[0])  # grayscale among RGB
    with pytest.raises(DataError, match="images differ in channels: .*a_1.png is RGB .*c_3.png is grayscale"):
        load_dataset(tmp_path, resize=(8, 8))
    assert load_dataset(tmp_path, resize=(8, 8), channels=3).x.shape == (3, 3, 8, 8)
    assert full.x.shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="smaller than the center crop 9x9"):
        load_dataset(tmp_path, center_crop=(9, 9))
    np.savez(tmp_path.parent / "arr.npz", x=np.zeros((1, 1, 2, 2)), y=np.zeros(1))
    with pytest.raises(DataError, match="apply to folders of images"):
        load_dataset(tmp_path.parent / "arr.npz", resize=(2, 2))


def _cifar_records(x: np.ndarray, *labels: np.ndarray) -> bytes:
    return b"".join(bytes(int(lab[i]) for lab in labels) + x[i].tobytes() for i in range(len(x)))


def test_cifar10_and_cifar100_binary(tmp_path):
    x = _images(3, (3, 32, 32))
    y = np.array([9, 0, 4])
    c10 = tmp_path / "c10"
    c10.mkdir()
    (c10 / "test_batch.bin").write_bytes(_cifar_records(x, y))
    (c10 / "data_batch_1.bin").write_bytes(_cifar_records(x[:2], y[:2]))
    (c10 / "data_batch_2.bin").write_bytes(_cifar_records(x[2:], y[2:]))
    test, train = load_dataset(c10, split="test"), load_dataset(c10, split="train")
    for data in (test, train):
        np.testing.assert_array_equal(data.x, x)
        np.testing.assert_array_equal(data.y, y)
    assert test.info.format == "CIFAR-10 binary" and test.info.sample_shape == (3, 32, 32)

    coarse, fine = np.array([1, 19, 0]), np.array([42, 99, 3])
    c100 = tmp_path / "c100"
    c100.mkdir()
    (c100 / "test.bin").write_bytes(_cifar_records(x, coarse, fine))
    data = load_dataset(c100 / "test.bin")
    assert data.info.format == "CIFAR-100 binary" and data.y.tolist() == fine.tolist()
    np.testing.assert_array_equal(data.x, x)
    assert load_dataset(c100, cifar100_labels="coarse").y.tolist() == coarse.tolist()

    (tmp_path / "odd.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="100 bytes is not a whole number of CIFAR-10 records \\(3073 bytes\\)"):
        load_dataset(tmp_path / "odd.bin")
    (tmp_path / "wrong.bin").write_bytes(_cifar_records(x[:1], np.array([10])))
    with pytest.raises(DataError, match="label 10 in record 0 is not below 10"):
        load_dataset(tmp_path / "wrong.bin")


def test_cifar_python_batches_are_refused_never_unpickled(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": [1]}, protocol=2))
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({}, protocol=2))
    for path in (tmp_path, tmp_path / "test_batch"):
        with pytest.raises(DataError) as info:
            load_dataset(path)
        assert "CIFAR 'python version'" in str(info.value) and "data_batch_*.bin, test_batch.bin" in str(info.value)


def test_missing_unknown_and_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass a directory of IDX files"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(tmp_path / "data.csv")
    with pytest.raises(DataError, match="found no data set"):
        load_dataset(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match="3 samples but labels of shape \\(2,\\)"):
        load_dataset(tmp_path / "d.npz")
    with pytest.raises(DataError, match="--limit must be positive"):
        load_dataset(tmp_path / "d.npz", limit=0)


def test_checks_against_the_model(tmp_path):
    _png(tmp_path / "a_1.png", _images(1, (32, 32, 3))[0])
    info = load_dataset(tmp_path).info
    with pytest.raises(DataError) as error:
        check_against_model(info, (1, 28, 28), where="lenet.onnx")
    assert "have 3 channels (RGB) but lenet.onnx takes 1 (grayscale" in str(error.value)
    with pytest.raises(DataError, match="takes \\(3, 28, 28\\); for images pass --resize H,W"):
        check_against_model(info, (3, 28, 28))
    with pytest.raises(DataError, match="labels up to 1 but the model has 1 outputs"):
        check_against_model(info, (3, 32, 32), outputs=1)
    check_against_model(info, (3, 32, 32), outputs=10)
    check_sample_shape((3, 32, 32), (3, 32, 32))
