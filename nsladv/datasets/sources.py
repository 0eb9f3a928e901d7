"""One way to name data: a TFDS name, an image folder, a `.npz`, arrays or a `tf.data.Dataset`, as `Splits`.

`resolve(source)` is what every job and `Pipeline(dataset=...)` read data
through. Whatever the source, the result is the same: unbatched
`(image float32, label int64)` train / validation / test datasets, the
validation split always carved from the training data, images in the declared
input range (default [0, 1]).

Sources:

- a TFDS name, `NAME[/CONFIG][:VERSION][@TRAIN,TEST]` (`"cifar10"`,
  `"mnist:3.0.1"`, `"svhn_cropped@train,test"`), loaded as `tfds.load` loads
  it (prepared in `data_dir`, downloaded where the network allows);
- a folder in the layout of `keras.utils.image_dataset_from_directory`: one
  subfolder per class, labels in the sorted order of the folder names, with
  `train/` and `test/` subfolders or alone (then a test share is carved);
- an `.npz` in the `keras.datasets` layout (`x_train`, `y_train` and, when
  there is a test split, `x_test`, `y_test`);
- arrays `(x, y)` (a test share is carved) or `((x_train, y_train),
  (x_test, y_test))`, as `keras.datasets.*.load_data()` returns them;
- a `tf.data.Dataset` of `(x, y)`, batched or not (a test share is carved).

Folders, `.npz` files, arrays and datasets are held in memory. Images stored as
integers 0-255 are scaled to the input range; float images are taken as they
are and must lie in it. Images of shape `(height, width)` get a channel axis.
Every example keeps an id (`Splits.train_ids`): its path relative to the data
folder, or its row in the arrays or the `.npz`, as a graph's edges name it.
"""

import dataclasses
import os
import pathlib

import numpy as np
import tensorflow as tf

from nsladv.errors import DataError

# What `keras.utils.image_dataset_from_directory` reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Carved splits come from one fixed shuffle, whatever the training seed, so that runs with other seeds are
# measured on the same examples.
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Splits:
    """train / validation / test datasets of unbatched `(image float32, label int64)`.

    Attributes:
        train, validation, test: the splits; validation comes from the
            training data, never from the test split.
        name: what the data was called (a TFDS name, a path, "arrays").
        image_shape: one image's shape, e.g. `(28, 28, 1)`.
        num_classes: the number of classes (labels are `0 .. num_classes - 1`).
        class_names: the classes' names where the source has them.
        train_ids: each training example's id (a path relative to the data
            folder, or a row number), in `train`'s order.
        layout: how the splits were made, for reports.
        info: TFDS's `DatasetInfo` for a TFDS source, else None.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    name: str
    image_shape: tuple
    num_classes: int
    class_names: tuple = None
    train_ids: tuple = None
    layout: dict = dataclasses.field(default_factory=dict)
    info: object = None


def resolve(
    source,
    *,
    data_dir=None,
    validation_fraction=0.1,
    test_fraction=0.2,
    input_range=(0.0, 1.0),
    download=True,
    channels=None,
):
    """The `Splits` of any data source (see the module's docstring for the kinds).

    Args:
        source: a TFDS name, a folder or `.npz` path, arrays or a `tf.data.Dataset`.
        data_dir: TFDS's data folder (TFDS names only).
        validation_fraction: share of the training data held out for validation, in [0, 0.5).
        test_fraction: share carved for the test split where the source has none, in (0, 0.5).
        input_range: `(low, high)` the model's inputs live in: integer pixels are scaled to it,
            float ones must lie in it.
        download: whether TFDS may download a dataset that is not prepared.
        channels: decode image files with this many channels (1 reads color images as grayscale, 3 grayscale as
            RGB, as `image_dataset_from_directory`'s `color_mode` does); None keeps the first image's.

    Returns:
        `Splits`.

    Raises:
        DataError: the source cannot be read, or its content is not an
            image classification dataset: the message says what was expected
            and what was found.
        DatasetUnavailableError: a TFDS dataset neither prepared nor downloadable.
    """
    check_source(source)
    if not 0 <= validation_fraction < 0.5:
        raise DataError(
            f"`validation_fraction` must be in [0, 0.5). Received: validation_fraction={validation_fraction!r}"
        )
    if not 0 < test_fraction < 0.5:
        raise DataError(f"`test_fraction` must be in (0, 0.5). Received: test_fraction={test_fraction!r}")
    low, high = check_input_range(input_range)
    options = dict(validation_fraction=validation_fraction, test_fraction=test_fraction, input_range=(low, high))
    if isinstance(source, tf.data.Dataset):
        x, y = _dataset_arrays(source)
        return _in_memory("tf.data.Dataset", (x, y, None), None, **options)
    if isinstance(source, (tuple, list)):
        return _from_arrays(source, **options)
    path = pathlib.Path(source)
    if path.is_dir():
        return _from_folder(path, channels=channels, **options)
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(
                "Expected a TFDS name, an image folder or a .npz file in the keras.datasets layout. "
                f"Received: the file {str(path)!r}"
            )
        return _from_npz(path, **options)
    if path.suffix == ".npz" or os.sep in str(source) or str(source).startswith("."):
        raise DataError(f"No such file or folder. Received: data={str(source)!r}")
    from nsladv.datasets import loading  # TFDS is imported only for TFDS names.

    return loading.load(str(source), data_dir=data_dir, download=download, **options)


def check_source(source):
    """Raises a DataError unless `source` is a kind of data `resolve` reads (cheap: nothing is loaded)."""
    if isinstance(source, (str, os.PathLike, tf.data.Dataset)):
        if isinstance(source, str) and not source.strip():
            raise DataError("Expected a data source. Received: an empty string")
        return
    if isinstance(source, (tuple, list)):
        _split_arrays(source)
        return
    raise DataError(
        "Expected a data source: a TFDS name, a folder or .npz path, arrays (x, y) or a tf.data.Dataset. "
        f"Received: {type(source).__name__}"
    )


def describe(source):
    """A short JSON-ready description of a source, for reports and run fingerprints."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, tf.data.Dataset):
        return f"tf.data.Dataset {source.element_spec}"
    (x, y), test = _split_arrays(source)
    text = f"arrays x{tuple(np.shape(x))} y{tuple(np.shape(y))}"
    return text if test is None else f"{text}, test x{tuple(np.shape(test[0]))}"


def fingerprint_arrays(source):
    """The bytes that identify in-memory data, for a run's fingerprint (None for names and paths)."""
    if not isinstance(source, (tuple, list)):
        return None
    import hashlib

    digest = hashlib.sha256()
    for array in _flatten(source):
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


# Kinds of source --------------------------------------------------------------------------------------------


def _from_arrays(source, **options):
    (x, y), test = _split_arrays(source)
    train = (x, y, None)
    if test is not None:
        test = (test[0], test[1], None)
    return _in_memory("arrays", train, test, **options)


def _from_npz(path, **options):
    with np.load(path, allow_pickle=False) as archive:
        keys = sorted(archive.files)
        missing = [k for k in ("x_train", "y_train") if k not in keys]
        has_test = [k for k in ("x_test", "y_test") if k in keys]
        if len(has_test) == 1:
            missing.append("y_test" if "x_test" in keys else "x_test")
        if missing:
            raise DataError(
                f"A .npz in the keras.datasets layout holds x_train, y_train (and x_test, y_test for a test split). "
                f"Missing: {', '.join(missing)}. Received: keys {keys} in {path}"
            )
        arrays = {k: archive[k] for k in NPZ_KEYS if k in keys}
    test = (arrays["x_test"], arrays["y_test"], None) if "x_test" in arrays else None
    return _in_memory(str(path), (arrays["x_train"], arrays["y_train"], None), test, **options)


def _from_folder(path, *, channels=None, **options):
    train_dir, test_dir = path / "train", path / "test"
    if train_dir.is_dir():
        classes = _class_folders(train_dir)
        train = _read_images(train_dir, classes, path, channels)
        test = None
        if test_dir.is_dir():
            test_classes = _class_folders(test_dir)
            if test_classes != classes:
                raise DataError(
                    f"train/ and test/ must hold the same class folders. Received: train/ {classes}, "
                    f"test/ {test_classes} in {path}"
                )
            test = _read_images(test_dir, classes, path, channels)
    else:
        classes = _class_folders(path)
        train, test = _read_images(path, classes, path, channels), None
    shapes = {train[0].shape[1:]} | ({test[0].shape[1:]} if test is not None else set())
    if len(shapes) > 1:
        raise DataError(f"train/ and test/ images must have one shape. Received: shapes {sorted(shapes)} in {path}")
    return _in_memory(str(path), train, test, class_names=tuple(classes), **options)


def _class_folders(folder):
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            "An image folder needs one subfolder per class, at least 2 (as keras.utils.image_dataset_from_directory "
            f"reads them). Received: {len(classes)} class folder{'' if len(classes) == 1 else 's'}"
            f"{' (' + classes[0] + ')' if classes else ''} in {folder}"
        )
    return classes


def _read_images(folder, classes, root, channels=None):
    """(images uint8 [n, h, w, c], labels, ids) of every image under `folder/<class>/`, ids relative to `root`."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(
                f"Every class folder needs images ({', '.join(IMAGE_EXTENSIONS)}). Received: none in {folder / name}"
            )
        files += found
        labels += [label] * len(found)
    first = _decode(files[0], channels or 0)
    height, width, channels = first.shape
    images = np.empty((len(files), height, width, channels), np.uint8)
    for i, file in enumerate(files):
        image = first if i == 0 else _decode(file, channels)
        if image.shape != first.shape:
            raise DataError(
                f"Every image must have the first one's shape {tuple(first.shape)} ({files[0].relative_to(root)}). "
                f"Received: {tuple(image.shape)} for {file.relative_to(root)}; resize them to one size"
            )
        images[i] = image
    ids = tuple(str(f.relative_to(root)) for f in files)
    return images, np.asarray(labels, np.int64), ids


def _decode(path, channels=0):
    try:
        return tf.io.decode_image(tf.io.read_file(str(path)), channels=channels, expand_animations=False).numpy()
    except tf.errors.OpError as error:
        raise DataError(f"Cannot decode {path} as an image. Received: {error.message.splitlines()[0]}") from None


def _dataset_arrays(dataset):
    """(x, y) arrays of a dataset of `(x, y)` pairs, batched (labels of rank 1) or not (scalar labels)."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2) or not all(isinstance(s, tf.TensorSpec) for s in spec):
        raise DataError(f"Expected a tf.data.Dataset of (image, label) pairs. Received: element_spec={spec!r}")
    image_spec, label_spec = spec
    if not label_spec.dtype.is_integer or label_spec.shape.rank not in (0, 1):
        raise DataError(
            "Expected integer class ids as labels: scalars, or vectors for a batched dataset. "
            f"Received: labels {label_spec}"
        )
    if label_spec.shape.rank == 1:
        dataset = dataset.unbatch()
    pairs = list(dataset.as_numpy_iterator())
    if not pairs:
        raise DataError("Expected examples. Received: an empty tf.data.Dataset")
    images, labels = zip(*pairs)
    return np.stack(images), np.asarray(labels)


def _split_arrays(source):
    """((x, y), (x_test, y_test) or None) of `(x, y)` or `((x, y), (x_test, y_test))`."""
    source = tuple(source)
    if len(source) == 2 and all(isinstance(part, (tuple, list)) and len(part) == 2 for part in source):
        (train, test) = source
        parts = (tuple(train), tuple(test))
    elif len(source) == 2 and not any(isinstance(part, (tuple, list)) for part in source):
        parts = (source, None)
    else:
        raise DataError(
            "Expected arrays as (x, y) or ((x_train, y_train), (x_test, y_test)). "
            f"Received: a {type(source).__name__} of {len(source)} items"
        )
    for part, where in zip(parts, ("", "test ")):
        if part is None:
            continue
        x, y = part
        if not hasattr(x, "shape") or not hasattr(y, "shape") or np.shape(x)[:1] != np.shape(y)[:1]:
            raise DataError(
                f"Expected {where}images and labels with one row per example. "
                f"Received: x of shape {np.shape(x)}, y of shape {np.shape(y)}"
            )
    return parts


def _flatten(source):
    for part in source:
        if isinstance(part, (tuple, list)):
            yield from _flatten(part)
        else:
            yield np.asarray(part)


# From arrays to splits --------------------------------------------------------------------------------------


def _in_memory(name, train, test, *, validation_fraction, test_fraction, input_range, class_names=None):
    """Splits of in-memory `(images, labels, ids)`: checked, scaled, the missing splits carved."""
    x, y = _images(train[0], input_range, "training"), _labels(train[1], "training")
    ids = train[2] if train[2] is not None else tuple(str(i) for i in range(len(y)))
    ids = np.asarray(ids)
    layout = {"source": name}
    if test is None:
        rows = np.random.default_rng(SPLIT_SEED).permutation(len(y))
        cut = max(1, round(test_fraction * len(y)))
        test_rows, rows = np.sort(rows[:cut]), rows[cut:]
        x_test, y_test = x[test_rows], y[test_rows]
        layout["test"] = f"{len(test_rows)} examples carved from the data ({test_fraction:g})"
        layout["test_carved"] = True
    else:
        rows = np.random.default_rng(SPLIT_SEED).permutation(len(y))
        x_test, y_test = _images(test[0], input_range, "test"), _labels(test[1], "test")
        layout["test"] = f"{len(y_test)} examples of the source's test split"
    if x_test.shape[1:] != x.shape[1:]:
        raise DataError(f"Training and test images must have one shape. Received: {x.shape[1:]} and {x_test.shape[1:]}")
    cut = round(validation_fraction * len(rows))
    validation_rows, train_rows = np.sort(rows[:cut]), np.sort(rows[cut:])
    if len(train_rows) == 0 or len(y_test) == 0:
        raise DataError(f"Too few examples to split into train, validation and test. Received: {len(y)} examples")
    layout["validation"] = f"{len(validation_rows)} training examples held out ({validation_fraction:g})"
    num_classes = int(max(y.max(), y_test.max())) + 1
    if len(np.unique(y)) < 2:
        raise DataError(f"Expected at least 2 classes in the training labels. Received: only class {int(y[0])}")
    image_shape = tuple(int(d) for d in x.shape[1:])

    def dataset(images, labels):
        return tf.data.Dataset.from_tensor_slices((images, labels))

    return Splits(
        train=dataset(x[train_rows], y[train_rows]),
        validation=dataset(x[validation_rows], y[validation_rows]),
        test=dataset(x_test, y_test),
        name=name,
        image_shape=image_shape,
        num_classes=num_classes if class_names is None else len(class_names),
        class_names=class_names,
        train_ids=tuple(ids[train_rows].tolist()),
        layout=layout,
    )


def _images(x, input_range, which):
    """float32 images `[n, h, w, c]` in `input_range`: integer pixels scaled from 0-255, floats checked."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise DataError(f"Expected {which} images with a batch axis. Received: shape {x.shape}")
    if x.ndim == 3:
        x = x[..., None]  # (n, height, width): grayscale without a channel axis.
    low, high = input_range
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"Expected {which} images as numbers. Received: dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        found = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if found[0] < 0 or found[1] > 255:
            raise DataError(
                f"Integer {which} images must hold pixels 0-255. Received: pixels in [{found[0]}, {found[1]}]"
            )
        scaled = x.astype(np.float32) / np.float32(255.0)  # exactly TFDS's and Keras' pixels / 255 on [0, 1]
        return scaled if (low, high) == (0.0, 1.0) else (low + scaled * (high - low)).astype(np.float32)
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"Expected finite {which} images. Received: NaN or infinite pixels")
    found = (float(x.min()), float(x.max())) if x.size else (low, high)
    if found[0] < low or found[1] > high:
        raise DataError(
            f"Float {which} images must lie in the declared input range [{low:g}, {high:g}]. Received: pixels in "
            f"[{found[0]:g}, {found[1]:g}]; scale them, store them as integers 0-255, or declare "
            f"input_range=({found[0]:g}, {found[1]:g})"
        )
    return x


def _labels(y, which):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) and y.dtype != bool):
        raise DataError(
            f"Expected {which} labels as integer class ids, one per example. Received: dtype {y.dtype}, shape {y.shape}"
        )
    if y.size and y.min() < 0:
        raise DataError(f"Labels must be class ids >= 0. Received: {which} labels down to {int(y.min())}")
    return y.astype(np.int64)


def check_input_range(input_range):
    """`(low, high)` as floats, or a DataError."""
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise DataError(f"`input_range` must be (low, high). Received: input_range={input_range!r}") from None
    if not low < high:
        raise DataError(f"`input_range` must have low < high. Received: input_range={input_range!r}")
    return low, high
