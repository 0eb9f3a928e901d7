"""Your model, your data: the jobs end to end on an image folder, an .npz, another TFDS dataset, arrays and tf.data.

Each run is a quick one (1 epoch, ~100 test examples) checked for its report, its model card, its TF Serving
export, and that the export predicts what the trained model predicts. Bad data stops before any training with one
line, and nothing is exported.
"""

import json
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import nsladv
from nsladv import datasets
from nsladv import export
from nsladv.errors import RunExistsError
from nsladv.jobs import cli

pytestmark = pytest.mark.slow
QUICK = ["--epochs", "1", "--eval-examples", "100", "--eval-epsilons", "0.1,0.3", "--quiet"]


@pytest.fixture(scope="module")
def digits(data_dir):
    """1,200 training and 200 test MNIST digits as uint8 (n, 28, 28) with labels, from the offline MNIST."""
    splits = datasets.load(data_dir=data_dir, validation_fraction=0.0)
    x, y = datasets.as_arrays(datasets.spread(splits.train, 1200))
    xt, yt = datasets.as_arrays(datasets.spread(splits.test, 200))
    as_uint8 = lambda images: np.round(images[..., 0] * 255).astype(np.uint8)
    return (as_uint8(x), y.astype(np.int64)), (as_uint8(xt), yt.astype(np.int64))


def small_cnn(input_shape=(28, 28, 1), classes=10, softmax=False):
    inputs = keras.Input(input_shape, name="pixels")
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None)(h)
    return keras.Model(inputs, outputs, name="small_cnn")


def saved(model, folder, name="mine"):
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def write_image_folder(root, x, y):
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.png").write_bytes(tf.io.encode_png(image[..., None]).numpy())


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr()


def where(tmp_path):
    return ["--out", tmp_path / "run", "--saved-models", tmp_path / "saved_models"]


def check_run(tmp_path, name, model_file, test_images):
    """The report, card and export exist, and the export predicts what the trained model predicts."""
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert (run / "model_card.md").is_file() and (run / "robustness.png").is_file()
    export = tmp_path / "saved_models" / name / "1"
    assert report["export"] == str(export) and (export / "saved_model.pb").is_file()
    trained = keras.saving.load_model(model_file, compile=False)
    trained.load_weights(run / "models" / "hardened.weights.h5")
    signature = tf.saved_model.load(str(export)).signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1]
    images = test_images.astype(np.float32)
    served = signature(**{input_name: tf.constant(images)})
    np.testing.assert_allclose(served["logits"].numpy(), trained.predict(images, verbose=0), atol=1e-5)
    return report


def test_harden_a_model_on_an_image_folder(tmp_path, digits, capsys):
    (x, y), (xt, yt) = digits
    write_image_folder(tmp_path / "images" / "train", x, y)
    write_image_folder(tmp_path / "images" / "test", xt, yt)
    model_file = saved(small_cnn(), tmp_path)
    argv = ["harden", "--model", model_file, "--data", tmp_path / "images", "--name", "digits", "--no-baseline"]
    code, out = run_cli(argv + QUICK + where(tmp_path), capsys)
    assert code == 0, out.err
    assert "data: " in out.out and "(28, 28, 1), 10 classes" in out.out
    report = check_run(tmp_path, "digits", model_file, xt[..., None] / 255)
    assert report["evaluations"]["hardened"]["examples"] == 100
    assert report["pipeline"]["dataset"] == str(tmp_path / "images")


def test_harden_on_an_npz_without_a_channel_axis_names_the_run_after_the_model(tmp_path, digits, capsys, monkeypatch):
    (x, y), (xt, yt) = digits
    np.savez(tmp_path / "digits.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    model_file = saved(small_cnn(softmax=True), tmp_path, "my_cnn")
    monkeypatch.chdir(tmp_path)  # runs/ and saved_models/ by default
    code, out = run_cli(["harden", "--model", model_file, "--data", "digits.npz", *QUICK], capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "runs" / "my_cnn" / "report.json").read_text())
    assert report["export"] == "saved_models/my_cnn/1"
    assert set(report["evaluations"]) == {"hardened", "baseline"}
    card = (tmp_path / "runs" / "my_cnn" / "model_card.md").read_text()
    assert "probabilities" in card


def test_harden_on_another_tfds_dataset_with_a_color_cnn(tmp_path, capsys):
    model_file = saved(small_cnn((32, 32, 3)), tmp_path, "cifar_like")
    argv = ["harden", "--model", model_file, "--data", "cifar10", "--epsilon", "8/255", "--no-baseline"]
    with tfds.testing.mock_data(num_examples=150):
        code, out = run_cli(argv + QUICK + where(tmp_path), capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["pipeline"]["threat"]["epsilon"] == pytest.approx(8 / 255)
    # The default recipe's steps are fractions of the radius: they carry over to 8/255.
    assert report["pipeline"]["threat"]["step_size"] == pytest.approx(0.5 * 8 / 255)
    assert report["pipeline"]["eval_epsilons"] == [0.1, 0.3]
    assert (tmp_path / "saved_models" / "cifar_like" / "1" / "saved_model.pb").is_file()


class SubclassedCNN(keras.Model):
    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(8, 3, strides=2, activation="relu")
        self.flat = keras.layers.Flatten()
        self.head = keras.layers.Dense(classes)

    def call(self, inputs, training=False):
        return self.head(self.flat(self.conv(inputs)))


@pytest.mark.parametrize("kind", ["arrays", "tf.data"])
def test_the_whole_job_in_one_python_call(tmp_path, digits, kind):
    (x, y), _ = digits
    data = (x, y) if kind == "arrays" else tf.data.Dataset.from_tensor_slices((x[..., None] / 255, y)).batch(32)
    # A functional model on arrays; a subclassed one on tf.data, whose undefended baseline trains a clone of it.
    model = small_cnn() if kind == "arrays" else SubclassedCNN()
    report = nsladv.harden(
        model=model,
        data=data,
        name="in_memory",
        epochs=1,
        eval_examples=100,
        baseline=kind != "arrays",
        out_dir=tmp_path / "run",
        saved_models=tmp_path / "saved_models",
        verbose=0,
        log=lambda *_: None,
    )
    worst = report["evaluations"]["hardened"]["worst_case"]
    assert set(worst) == {"0.3"} and report["evaluations"]["hardened"]["examples"] == 100  # the recipe's radius
    # The model given is the one trained: the export serves its weights.
    export = tf.saved_model.load(report["export"]).signatures["serving_default"]
    (input_name,) = export.structured_input_signature[1]
    images = x[:16, ..., None].astype(np.float32) / 255
    served = export(**{input_name: tf.constant(images)})["logits"].numpy()
    np.testing.assert_allclose(served, model.predict(images, verbose=0), atol=1e-5)


def test_a_rerun_with_other_training_settings_keeps_the_work(tmp_path, digits, capsys):
    (x, y), (xt, yt) = digits
    np.savez(tmp_path / "d.npz", x_train=x[:600], y_train=y[:600], x_test=xt, y_test=yt)
    model_file = saved(small_cnn(), tmp_path)
    argv = ["harden", "--model", model_file, "--data", tmp_path / "d.npz", "--no-baseline", "--no-export"]
    argv += QUICK + where(tmp_path)
    assert run_cli(argv, capsys)[0] == 0
    weights = tmp_path / "run" / "models" / "hardened.weights.h5"
    before = weights.read_bytes()
    code, out = run_cli([*argv, "--seed", "1"], capsys)
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert "holds a run trained with other settings (seed: 0 -> 1)" in out.err and "--overwrite" in out.err
    assert weights.read_bytes() == before and (tmp_path / "run" / "evaluations").is_dir()
    # Other evaluation radii keep the trained model, and the first evaluation too.
    code, out = run_cli([*argv, "--eval-epsilons", "0.2"], capsys)
    assert code == 0 and "reusing it" in out.out
    assert len(list((tmp_path / "run" / "evaluations").iterdir())) == 2
    code, out = run_cli([*argv, "--seed", "1", "--overwrite"], capsys)
    assert code == 0 and "training the hardened model" in out.out and weights.read_bytes() != before


def test_python_reruns_raise_rather_than_delete(tmp_path, digits):
    (x, y), _ = digits
    kwargs = dict(
        data=(x[:400], y[:400]), epochs=1, eval_examples=50, baseline=False, export=False, out_dir=tmp_path / "r"
    )
    nsladv.harden(model=small_cnn(), verbose=0, log=lambda *_: None, **kwargs)
    with pytest.raises(RunExistsError, match=r"holds a run trained with other settings \(.*model: "):
        nsladv.harden(model=small_cnn(), verbose=0, log=lambda *_: None, **kwargs)


def bad_npz(folder, **arrays):
    np.savez(folder / "bad.npz", **arrays)
    return folder / "bad.npz"


@pytest.mark.parametrize(
    "make, model, message",
    [
        (
            lambda d, x, y: (d / "one" / "only_class").mkdir(parents=True) or d / "one",
            small_cnn,
            r"nsladv: error: An image folder needs one subfolder per class, at least 2 .*Received: 1 class folder",
        ),
        (
            lambda d, x, y: (d / "empty").mkdir() or d / "empty",
            small_cnn,
            r"nsladv: error: An image folder needs .*Received: 0 class folders in",
        ),
        (
            lambda d, x, y: bad_npz(d, x_train=x, y_train=y + 3, x_test=x, y_test=y),
            small_cnn,
            r"nsladv: error: The model must output one score per class: shape \(batch, 13\), as .* has labels 0-12\. "
            r"Received: output \(batch, 10\)",
        ),
        (
            lambda d, x, y: bad_npz(d, x_train=x.astype(np.float32), y_train=y),
            small_cnn,
            r"nsladv: error: Float training images must lie in the declared input range \[0, 1\]\. "
            r"Received: pixels in \[0, 255\]",
        ),
        (
            lambda d, x, y: bad_npz(d, x_train=x, y_train=y),
            lambda: small_cnn((32, 32, 3)),
            r"nsladv: error: The model's input does not fit the data: expected images of shape \(32, 32, 3\) .*"
            r"Received: images of shape \(28, 28, 1\) from .*bad\.npz",
        ),
        (
            lambda d, x, y: bad_npz(d, x_train=x, x_test=x, y_test=y),
            small_cnn,
            r"nsladv: error: .*Missing: y_train\. Received: keys \['x_test', 'x_train', 'y_test'\]",
        ),
    ],
    ids=["one class", "empty folder", "labels out of range", "float 0-255", "input mismatch", "npz missing key"],
)
def test_bad_input_is_one_line_a_non_zero_exit_and_nothing_exported(tmp_path, digits, capsys, make, model, message):
    (x, y), _ = digits
    data = make(tmp_path, x[:50], y[:50])
    argv = ["harden", "--model", saved(model(), tmp_path), "--data", data, *QUICK, *where(tmp_path)]
    code, out = run_cli(argv, capsys)
    assert code == 2
    assert len(out.err.strip().splitlines()) == 1, out.err
    assert re.search(message, out.err), out.err
    assert not (tmp_path / "saved_models").exists() and not (tmp_path / "run" / "models").exists()


def test_evaluate_any_model_on_an_image_folder_with_a_fraction_radius(tmp_path, digits, capsys):
    _, (xt, yt) = digits
    write_image_folder(tmp_path / "images", xt, yt)
    model_file = saved(small_cnn(), tmp_path)
    argv = ["evaluate", model_file, "--data", tmp_path / "images", "--epsilons", "8/255", "--attacks", "quick"]
    code, out = run_cli([*argv, "--eval-examples", "30", "--out", tmp_path / "eval"], capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["evaluations"]["model"]["epsilons"] == [pytest.approx(8 / 255)]
    assert report["dataset"]["examples"] == 30 and report["dataset"]["source"] == str(tmp_path / "images")
    # One folder has no test split of its own: evaluation draws from all of it, not from a carved share.
    assert report["dataset"]["test"] == "all 200 examples (the data has no test split)"


def test_color_images_are_read_with_the_models_channels_and_a_signature_says_what_it_takes(tmp_path, digits, capsys):
    _, (xt, yt) = digits
    for i, (image, label) in enumerate(zip(xt[:40], yt[:40])):
        folder = tmp_path / "photos" / f"digit {label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(np.repeat(image[..., None], 3, axis=-1)).numpy())
    model_file = saved(small_cnn(), tmp_path)  # grayscale (28, 28, 1), as image_dataset_from_directory's color_mode
    argv = ["evaluate", model_file, "--data", tmp_path / "photos", "--attacks", "quick", "--epsilons", "0.1"]
    code, out = run_cli([*argv, "--out", tmp_path / "eval"], capsys)
    assert code == 0, out.err
    export.export_model(small_cnn((32, 32, 3)), tmp_path / "saved_models", "color", input_shape=(32, 32, 3))
    code, out = run_cli(["evaluate", tmp_path / "saved_models" / "color", "--data", tmp_path / "photos"], capsys)
    assert (
        code == 2 and "expected images of shape (32, 32, 3) (the model's input). Received: images of shape " in out.err
    )


def test_tune_a_pipeline_on_your_npz_under_your_name(tmp_path, digits, capsys):
    (x, y), (xt, yt) = digits
    np.savez(tmp_path / "d.npz", x_train=x[:640], y_train=y[:640], x_test=xt, y_test=yt)
    tiny = str(pathlib.Path(__file__).parent / "tiny_pipeline.py")
    argv = ["tune", tiny, "--data", tmp_path / "d.npz", "--name", "tuned", "--trials", "1", "--epochs", "1"]
    code, out = run_cli([*argv, "--eval-examples", "50", "--quiet", *where(tmp_path)], capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "run" / "tuning_report.json").read_text())
    assert report["export"] == str(tmp_path / "saved_models" / "tuned" / "1")
    assert report["pipeline"]["dataset"] == str(tmp_path / "d.npz")


def test_your_graph_joins_natural_neighbors_and_counts_the_edges_it_cannot_place(tmp_path, digits, capsys):
    (x, y), (xt, yt) = digits
    x, y = x[:400], y[:400]
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    # Each row joins the next row of its class: ids are the .npz's row numbers.
    lines = []
    for label in range(10):
        rows = np.flatnonzero(y == label)
        lines += [f"{a}\t{b}\t0.9" for a, b in zip(rows[:-1], rows[1:])]
    lines += ["3\tnot_a_row\t0.5", "99999\t4\t0.5"]
    (tmp_path / "edges.tsv").write_text("\n".join(lines) + "\n")
    argv = ["harden", "--model", saved(small_cnn(), tmp_path), "--data", tmp_path / "d.npz"]
    code, out = run_cli([*argv, "--graph", tmp_path / "edges.tsv", "--no-baseline", *QUICK, *where(tmp_path)], capsys)
    assert code == 0, out.err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    read = report["graph"]["edges_file"]
    # The two edges to ids no example has, and every edge that reaches a row held out for validation, are left out.
    train_ids = set(datasets.resolve(tmp_path / "d.npz").train_ids)
    edges = [line.split("\t")[:2] for line in lines]
    outside = {node for edge in edges for node in edge if node not in train_ids}
    left_out = sum(any(node in outside for node in edge) for edge in edges)
    assert {"not_a_row", "99999"} < outside
    assert read == {
        "edges": len(lines),
        "kept": len(lines) - left_out,
        "unknown_ids": len(outside),
        "edges_left_out": left_out,
        "unknown_examples": sorted(outside)[:5],
    }
    assert f"{read['edges_left_out']} of its {read['edges']} edges left out" in out.out
    assert set(report["evaluations"]) == {"hardened", "without_graph"}
