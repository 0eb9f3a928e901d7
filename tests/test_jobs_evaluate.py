"""`nsladv evaluate`: any saved model, attacked white-box, with a report, a plot and a model card."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from nsladv import datasets as data
from nsladv import export
from nsladv.jobs import cli
from nsladv.jobs import evaluate as evaluate_job

pytestmark = pytest.mark.slow


def small_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1), name="image")
    hidden = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(hidden)))


def test_spread_takes_evenly_spaced_examples():
    picked = [int(v) for v in data.spread(tf.data.Dataset.range(10), 4)]
    assert picked == [0, 3, 6, 9]
    assert [int(v) for v in data.spread(tf.data.Dataset.range(3), 5)] == [0, 1, 2]


def test_evaluate_a_keras_file_and_its_export_alike(tmp_path, data_dir):
    model = small_model()
    # Trained a little, so that no prediction is a near tie that rounding could flip between the two.
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(
        data.input_pipeline(data.load(data_dir=data_dir).train.take(1000), batch_size=100, training=False),
        epochs=2,
        verbose=0,
    )
    model.save(tmp_path / "mine.keras")
    export.export_model(model, tmp_path / "saved_models", "mine", input_shape=(28, 28, 1))
    kwargs = dict(data_dir=data_dir, epsilons=(0.05,), attacks="quick", eval_examples=60, log=lambda *_: None)
    lines = []
    from_file = evaluate_job.evaluate(
        tmp_path / "mine.keras", out_dir=tmp_path / "a", **{**kwargs, "log": lines.append}
    )
    from_export = evaluate_job.evaluate(tmp_path / "saved_models" / "mine", out_dir=tmp_path / "b", **kwargs)
    first, second = from_file["evaluations"]["model"], from_export["evaluations"]["model"]
    assert first["examples"] == second["examples"] == 60
    assert first["clean_accuracy"] == second["clean_accuracy"]  # the shipped signature is the same model
    assert set(first["attacks"]) == {"fgsm", "pgd20", "apgd-ce"} and "0.05" in first["worst_case"]
    assert any("apgd-ce  at 0.05" in line for line in lines)  # progress while it runs
    written = json.loads((tmp_path / "a" / "report.json").read_text())
    assert written["evaluations"]["model"]["worst_case"] == first["worst_case"]
    card = (tmp_path / "a" / "model_card.md").read_text()
    assert "# Model card: mine" in card and "worst case (95% interval)" in card and "## Limits of the claim" in card
    assert "no nsladv hardening metadata" in card
    assert (tmp_path / "b" / "robustness.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: None, "Expected a saved Keras model (.keras), a SavedModel folder"),
        (
            lambda path: keras.Sequential(
                [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="sigmoid")]
            ).save(path),
            "The model ends in a sigmoid",
        ),
    ],
    ids=["missing", "sigmoid"],
)
def test_cli_evaluate_errors_are_one_line(make, message, tmp_path, data_dir, capsys):
    path = tmp_path / "model.keras"
    make(path)
    code = cli.main(["evaluate", str(path), "--data-dir", data_dir, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_evaluate_writes_the_card(tmp_path, data_dir, capsys):
    small_model().save(tmp_path / "m.keras")
    argv = [
        "evaluate",
        str(tmp_path / "m.keras"),
        "--data-dir",
        data_dir,
        "--attacks",
        "quick",
        "--eval-examples",
        "40",
        "--epsilons",
        "0.1,0.2",
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["evaluations"]["model"]["worst_case"]) == {"0.1", "0.2"}
    assert np.isclose(report["evaluations"]["model"]["test_examples"], 40)
    # The same command again continues from the kept blocks (all of them: nothing left to attack), same answer.
    capsys.readouterr()
    assert cli.main(argv) == 0
    again = json.loads((tmp_path / "run" / "report.json").read_text())
    out = capsys.readouterr().out
    assert "continuing from the blocks kept in" in out and "blocks came from an earlier run" in out
    assert again["evaluations"]["model"]["not_robust_examples"] == report["evaluations"]["model"]["not_robust_examples"]
    # Other settings in the same folder are refused in one line, and --overwrite starts afresh.
    assert cli.main([*argv[:-3], "0.3", *argv[-2:]]) == 2
    assert "differs in: epsilons" in capsys.readouterr().err
    assert cli.main([*argv[:-3], "0.3", *argv[-2:], "--overwrite"]) == 0
    assert "--overwrite: the blocks kept in" in capsys.readouterr().out


def test_the_summary_table_keeps_its_columns_whatever_the_attack_names():
    """The standard set's `apgd-ce-x20-closest` is longer than the column once was: the rows still line up."""
    from nsladv.jobs.report import summary_table

    attacks = ["fgsm", "apgd-ce-x20-closest", "square"]
    result = {
        "epsilons": [0.1, 0.3],
        "clean_accuracy": 0.99,
        "attacks": {name: {} for name in attacks},
        "after_each_attack": {"0.1": dict(zip(attacks, (0.9, 0.8, 0.8))), "0.3": dict(zip(attacks, (0.5, 0.4, 0.3)))},
    }
    lines = summary_table({"hardened": result, "baseline": result}).splitlines()
    rows = [lines[0]] + lines[2:8]
    assert len(rows) == 7 and len({len(line) for line in rows}) == 1, "\n".join(rows)
    assert all(line.index("%") == rows[1].index("%") for line in rows[1:])  # the clean column
