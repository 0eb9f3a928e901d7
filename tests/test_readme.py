"""README's "Harden your own model" section runs as written, with tiny settings, so it cannot drift from the code.

The test writes the files the section names (`mine.keras`, `images/`, `digits.npz`) from MNIST digits, runs every
`nsladv` command of its shell blocks with quick flags appended, and executes its Python block with `nsladv.harden`
and `nsladv.evaluate_robustness` given quick defaults.
"""

import pathlib
import re
import shlex

import keras
import numpy as np
import pytest
import tensorflow as tf

import nsladv
from nsladv import datasets
from nsladv.jobs import cli

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
QUICK = {
    "harden": ["--epochs", "1", "--eval-examples", "60", "--eval-epsilons", "0.3", "--no-baseline", "--quiet"],
    "evaluate": ["--attacks", "quick", "--eval-examples", "30"],
}

pytestmark = pytest.mark.slow


def section(title="## Harden your own model"):
    text = README.read_text()
    start = text.index(title)
    end = text.index("\n## ", start + len(title))
    return text[start:end]


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


def test_the_section_has_the_three_routes():
    text = section()
    assert blocks("bash") and blocks("python")
    for route in ("**1. The command line", "**2. A pipeline file", "**3. Python"):
        assert route in text


@pytest.fixture
def users_files(tmp_path, data_dir, monkeypatch):
    """mine.keras, images/ (train/ and test/) and digits.npz in a fresh working folder."""
    splits = datasets.load(data_dir=data_dir, validation_fraction=0.0)
    x, y = datasets.as_arrays(datasets.spread(splits.train, 600))
    xt, yt = datasets.as_arrays(datasets.spread(splits.test, 100))
    x, xt = (np.round(images[..., 0] * 255).astype(np.uint8) for images in (x, xt))
    np.savez(tmp_path / "digits.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    for part, images, labels in (("train", x, y), ("test", xt, yt)):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = tmp_path / "images" / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(tf.io.encode_png(image[..., None]).numpy())
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(h)).save(tmp_path / "mine.keras")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shell_commands_run(users_files, capsys):
    commands = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("nsladv ")]
    assert len(commands) >= 3
    for command in commands:
        argv = shlex.split(command)[1:]
        code = cli.main(argv + QUICK[argv[0]])
        out = capsys.readouterr()
        assert code == 0, f"{command}: {out.err}"
    assert (users_files / "runs" / "mine" / "model_card.md").is_file()
    assert (users_files / "saved_models" / "mine" / "1" / "saved_model.pb").is_file()


def test_the_python_block_runs(users_files, monkeypatch):
    harden, evaluate = nsladv.harden, nsladv.evaluate_robustness

    def quick_harden(*args, **kwargs):
        return harden(*args, **{"epochs": 1, "eval_examples": 60, "baseline": False, "verbose": 0, **kwargs})

    def quick_evaluate(*args, **kwargs):
        return evaluate(*args, **{"attacks": "quick", **kwargs})

    monkeypatch.setattr(nsladv, "harden", quick_harden)
    monkeypatch.setattr(nsladv, "evaluate_robustness", quick_evaluate)
    (code,) = blocks("python")
    exec(compile(code, str(README), "exec"), {})
    assert (users_files / "robustness.md").read_text().startswith("# Robustness")
    assert (users_files / "saved_models" / "digits" / "1" / "saved_model.pb").is_file()
