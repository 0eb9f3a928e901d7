"""nsladv.datasets.resolve: every kind of source, the splits it makes, and the errors for bad data."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from nsladv import datasets
from nsladv.errors import DataError


def images_and_labels(n=40, shape=(6, 5), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), (np.arange(n) % classes).astype(np.int64)


def write_folder(root, x, y, names=None):
    """PNGs under root/<class name>/<i>.png; returns their relative paths in write order."""
    paths = []
    for i, (image, label) in enumerate(zip(x, y)):
        name = names[label] if names else f"class_{label}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        image = image if image.ndim == 3 else image[..., None]
        (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
        paths.append(f"{root.name}/{name}/{i:03d}.png")
    return paths


def arrays(splits_dataset):
    return datasets.as_arrays(splits_dataset)


def test_arrays_are_split_into_train_validation_and_test_without_overlap():
    x, y = images_and_labels(50)
    splits = datasets.resolve((x, y), validation_fraction=0.2, test_fraction=0.2)
    train, validation, test = (arrays(d) for d in (splits.train, splits.validation, splits.test))
    assert (len(train[1]), len(validation[1]), len(test[1])) == (32, 8, 10)
    assert splits.image_shape == (6, 5, 1) and splits.num_classes == 3
    # Every example lands in exactly one split, scaled by 1/255 as Keras and TFDS scale pixels.
    together = np.concatenate([train[0], validation[0], test[0]])
    expected = (x[..., None].astype(np.float32) / 255).reshape(50, -1)
    found = together.reshape(50, -1)
    assert sorted(map(bytes, found)) == sorted(map(bytes, expected))
    # Ids are the rows of the arrays, so a graph's edges can name them.
    rows = np.asarray(splits.train_ids, int)
    np.testing.assert_array_equal(train[0], x[rows][..., None].astype(np.float32) / 255)
    np.testing.assert_array_equal(train[1], y[rows])


def test_carved_splits_do_not_depend_on_anything_but_the_data():
    x, y = images_and_labels(30)
    first, second = datasets.resolve((x, y)), datasets.resolve((x, y))
    assert first.train_ids == second.train_ids


def test_keras_datasets_style_arrays_keep_their_test_split():
    (x, y), (xt, yt) = images_and_labels(40), images_and_labels(12, seed=1)
    splits = datasets.resolve(((x, y), (xt, yt)), validation_fraction=0.25)
    test = arrays(splits.test)
    np.testing.assert_array_equal(test[1], yt)
    assert len(arrays(splits.train)[1]) == 30 and len(arrays(splits.validation)[1]) == 10


@pytest.mark.parametrize("batched", [False, True])
def test_a_tf_data_dataset_batched_or_not(batched):
    x, y = images_and_labels(30)
    dataset = tf.data.Dataset.from_tensor_slices((x.astype(np.float32) / 255, y))
    splits = datasets.resolve(dataset.batch(7) if batched else dataset)
    total = sum(len(arrays(d)[1]) for d in (splits.train, splits.validation, splits.test))
    assert total == 30 and splits.image_shape == (6, 5, 1)


def test_an_npz_in_the_keras_datasets_layout_without_a_channel_axis(tmp_path):
    (x, y), (xt, yt) = images_and_labels(20), images_and_labels(8, seed=1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    splits = datasets.resolve(str(tmp_path / "d.npz"), validation_fraction=0.25)
    assert splits.image_shape == (6, 5, 1)
    np.testing.assert_array_equal(arrays(splits.test)[0], xt[..., None].astype(np.float32) / 255)


def test_an_npz_missing_a_key_names_it(tmp_path):
    x, y = images_and_labels(20)
    np.savez(tmp_path / "d.npz", x_train=x, x_test=x, y_test=y)
    with pytest.raises(DataError, match=r"Missing: y_train\. Received: keys \['x_test', 'x_train', 'y_test'\]"):
        datasets.resolve(tmp_path / "d.npz")


def test_an_image_folder_with_train_and_test_subfolders(tmp_path):
    x, y = images_and_labels(24, shape=(6, 5, 3))
    names = ["cat", "ant", "bee"]  # labels follow the sorted folder names: ant 0, bee 1, cat 2
    write_folder(tmp_path / "train", x[:18], y[:18], names)
    write_folder(tmp_path / "test", x[18:], y[18:], names)
    splits = datasets.resolve(tmp_path, validation_fraction=0.0)
    assert splits.class_names == ("ant", "bee", "cat") and splits.image_shape == (6, 5, 3)
    train_x, train_y = arrays(splits.train)
    sorted_label = {names.index(n): i for i, n in enumerate(sorted(names))}
    for image, label, path in zip(train_x, train_y, splits.train_ids):
        row = int(path.rsplit("/", 1)[1].removesuffix(".png"))
        assert path.startswith("train/") and label == sorted_label[y[row]]
        np.testing.assert_array_equal(image, x[row].astype(np.float32) / 255)
    assert len(arrays(splits.test)[1]) == 6


def test_one_image_folder_is_split_by_the_job(tmp_path):
    x, y = images_and_labels(30, shape=(6, 5))
    write_folder(tmp_path / "images", x, y)
    splits = datasets.resolve(tmp_path / "images", test_fraction=0.2, validation_fraction=0.25)
    assert [len(arrays(d)[1]) for d in (splits.train, splits.validation, splits.test)] == [18, 6, 6]
    assert splits.image_shape == (6, 5, 1) and splits.train_ids[0].startswith("class_")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: (root / "only").mkdir(parents=True), r"at least 2.*Received: 1 class folder \(only\) in"),
        (lambda root: root.mkdir(), r"at least 2.*Received: 0 class folders in"),
        (
            lambda root: [(root / n).mkdir(parents=True) for n in ("a", "b")],
            r"Every class folder needs images .*Received: none in .*a$",
        ),
    ],
    ids=["one class", "empty", "no images"],
)
def test_bad_image_folders(tmp_path, make, message):
    make(tmp_path / "data")
    with pytest.raises(DataError, match=message):
        datasets.resolve(tmp_path / "data")


def test_images_of_different_sizes_name_the_file(tmp_path):
    x, y = images_and_labels(4, shape=(6, 5))
    write_folder(tmp_path / "d", x, y % 2)
    (tmp_path / "d" / "class_1" / "big.png").write_bytes(tf.io.encode_png(np.zeros((7, 5, 1), np.uint8)).numpy())
    with pytest.raises(DataError, match=r"first one's shape \(6, 5, 1\).*Received: \(7, 5, 1\) for class_1/big\.png"):
        datasets.resolve(tmp_path / "d")


def test_float_pixels_outside_the_declared_range_are_refused_with_the_range_found():
    x, y = images_and_labels(20)
    with pytest.raises(DataError, match=r"declared input range \[0, 1\]\. Received: pixels in \[0, 255\]"):
        datasets.resolve((x.astype(np.float32), y))


def test_a_declared_range_scales_integer_pixels_into_it():
    x, y = images_and_labels(20)
    splits = datasets.resolve((x, y), input_range=(-1, 1))
    found = arrays(splits.train)[0]
    assert found.min() >= -1 and found.max() <= 1 and found.min() < -0.9


@pytest.mark.parametrize(
    "source, message",
    [
        ((np.zeros((4, 3, 3)), np.array([0, 1, -1, 0])), r"Labels must be class ids >= 0\. Received: training labels"),
        ((np.zeros((4, 3, 3)), np.ones((4, 3), np.float32)), r"integer class ids.*Received: dtype float32, shape"),
        ((np.zeros((4, 3, 3)), np.zeros(4, np.int64)), r"at least 2 classes.*Received: only class 0"),
        ((np.zeros((4, 3, 3)), np.zeros(3, np.int64)), r"one row per example\. Received: x of shape \(4, 3, 3\)"),
        ({"x": 1}, r"Expected a data source.*Received: dict"),
        ("./no/such/folder", r"No such file or folder\. Received: data='\./no/such/folder'"),
        ("cifar10@train", r"NAME\[/CONFIG\]\[:VERSION\]\[@TRAIN,TEST\].*Received: data='cifar10@train'"),
    ],
)
def test_bad_sources(source, message):
    with pytest.raises(DataError, match=message):
        datasets.resolve(source)


def test_a_tfds_dataset_other_than_mnist_through_tfds_mock_data():
    with tfds.testing.mock_data(num_examples=20):
        splits = datasets.resolve("cifar10@train,test")
    assert splits.image_shape == (32, 32, 3) and splits.num_classes == 10
    x, y = arrays(splits.test)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1 and y.dtype == np.int64


def test_the_offline_mnist_is_named_as_tfds_names_it(data_dir):
    splits = datasets.resolve("mnist_offline@train,test", data_dir=data_dir, validation_fraction=0.1)
    assert splits.layout["validation"] == "train[90%:] held out of train" and len(splits.train_ids) == 54_000
    with pytest.raises(DataError, match=r"has no split 'valid'\. Available: test, train"):
        datasets.resolve("mnist_offline@train,valid", data_dir=data_dir)
