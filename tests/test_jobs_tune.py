"""The tune job (`nsladv tune`): harden's phases around a keras-tuner search; the best trial evaluated and exported."""

import json
import pathlib

import pytest
import tensorflow as tf

from nsladv import load_pipeline
from nsladv import precision
from nsladv.errors import RunExistsError
from nsladv.errors import SettingsError
from nsladv.jobs import tune as tune_job

HERE = pathlib.Path(__file__).parent
pytestmark = pytest.mark.slow


def _tune(pipeline_file, tmp_path, data_dir, **settings):
    """A one-epoch search of a test pipeline, its run and exports under tmp_path."""
    return tune_job.tune_pipeline(
        load_pipeline(str(HERE / pipeline_file)),
        **{
            "trials": 1,
            "epochs": 1,
            "out_dir": tmp_path / "tuning",
            "saved_models": tmp_path / "saved_models",
            "data_dir": data_dir,
            "eval_examples": 100,
            "verbose": 0,
            "log": lambda *_: None,
            **settings,
        },
    )


def test_the_tune_job_keeps_its_phases_and_refuses_other_settings(tmp_path, data_dir):
    """Built from harden's phases: a rerun reuses the search, the evaluation and the export; other search settings
    stop with RunExistsError unless overwrite; what the caller changed is recorded in the report."""
    lines = []
    kwargs = dict(eval_examples=60, log=lines.append)
    first = _tune("tiny_pipeline.py", tmp_path, data_dir, **kwargs)
    assert first["pipeline"]["eval_examples"] == 60 and first["evaluation"]["examples"] == 60
    # The report records the precision "auto" chose on this machine: float32, or bfloat16 on bfloat16 hardware.
    assert first["tuning"]["monitor"]["split"] == "validation"
    assert first["precision"]["training"] == precision.choose("auto").name
    lines.clear()
    again = _tune("tiny_pipeline.py", tmp_path, data_dir, **kwargs)
    assert again["evaluation"] == first["evaluation"] and again["export"] == first["export"]
    assert any("evaluation was made by an earlier run" in line for line in lines)
    assert any("exported for TF Serving by an earlier run" in line for line in lines)
    with pytest.raises(RunExistsError, match=r"search.epochs: 1 -> 2.*--overwrite"):
        _tune("tiny_pipeline.py", tmp_path, data_dir, **{**kwargs, "epochs": 2})
    with pytest.raises(SettingsError, match=r"Unknown tuner. Expected one of .*Received: tuner='grid'"):
        _tune("tiny_pipeline.py", tmp_path, data_dir, **{**kwargs, "tuner": "grid"})
    replaced = _tune(
        "tiny_pipeline.py", tmp_path, data_dir, **{**kwargs, "epochs": 2, "overwrite": True, "export": False}
    )
    assert [t["status"] for t in replaced["tuning"]["trials"]] == ["COMPLETED"] and replaced["tuning"]["epochs"] == 2


def test_tune_pipeline_exports_the_best_trial(tmp_path, data_dir):
    report = _tune("tiny_pipeline.py", tmp_path, data_dir, trials=3)
    assert len(report["tuning"]["trials"]) == 3
    export = pathlib.Path(report["export"])
    metadata = json.loads((export / "assets.extra" / "nsladv_metadata.json").read_text())
    assert metadata["tuning"]["best_trial"] == report["tuning"]["best_trial"]
    signature = tf.saved_model.load(str(export)).signatures["serving_default"]
    assert signature(image=tf.zeros((3, 28, 28, 1)))["class_ids"].shape == (3,)
    assert json.loads((tmp_path / "tuning" / "tuning_report.json").read_text())["export"] == str(export)
    # One HParams summary per trial for TensorBoard, beside the trial's epoch logs.
    hparams = {}
    for events in (tmp_path / "tuning" / "logs").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    hparams.setdefault(events.parent.name, []).append(value.tag)
    assert len(hparams) == 3 and all(name.startswith("trial_") for name in hparams)
    assert list((tmp_path / "tuning" / "logs").glob("trial_*/validation/events.out.tfevents.*"))


def test_tune_a_graph_pipeline_searches_the_graph_multiplier(tmp_path, data_dir):
    report = _tune("tiny_graph_pipeline.py", tmp_path, data_dir, trials=2)
    trials = report["tuning"]["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]
    multipliers = [t["hyperparameters"]["graph_multiplier"] for t in trials]
    assert all(0.1 <= m <= 10.0 for m in multipliers) and multipliers[0] != multipliers[1]
    metadata = json.loads((pathlib.Path(report["export"]) / "assets.extra" / "nsladv_metadata.json").read_text())
    best = report["tuning"]["best_hyperparameters"]["graph_multiplier"]
    assert metadata["graph"]["multiplier"] == best and metadata["graph"]["distance"] == "kl"
