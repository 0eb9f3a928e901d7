"""The tune job (`nsladv tune`): harden's phases around a keras-tuner search; the best trial evaluated and exported."""

import json
import pathlib

import pytest
import tensorflow as tf

from nsladv import load_pipeline
from nsladv.errors import RunExistsError
from nsladv.errors import SettingsError
from nsladv.jobs import tune as tune_job

HERE = pathlib.Path(__file__).parent
pytestmark = pytest.mark.slow


def _tune_one_epoch(pipeline_file, trials, tmp_path, data_dir):
    return tune_job.tune_pipeline(
        load_pipeline(str(HERE / pipeline_file)),
        trials=trials,
        epochs=1,
        out_dir=tmp_path / "tuning",
        saved_models=tmp_path / "saved_models",
        data_dir=data_dir,
        eval_examples=100,
        verbose=0,
        log=lambda *_: None,
    )


def test_the_tune_job_keeps_its_phases_and_refuses_other_settings(tmp_path, data_dir):
    """Built from harden's phases: a rerun reuses the search, the evaluation and the export; other search settings
    stop with RunExistsError unless overwrite; what the caller changed is recorded in the report."""
    pipeline, lines = load_pipeline(str(HERE / "tiny_pipeline.py")), []
    kwargs = dict(
        trials=1,
        epochs=1,
        out_dir=tmp_path / "tuning",
        saved_models=tmp_path / "saved_models",
        data_dir=data_dir,
        eval_examples=60,
        verbose=0,
        log=lines.append,
    )
    first = tune_job.tune_pipeline(pipeline, **kwargs)
    assert first["pipeline"]["eval_examples"] == 60 and first["evaluation"]["examples"] == 60
    assert first["tuning"]["monitor"]["split"] == "validation" and first["precision"]["training"] == "float32"
    lines.clear()
    again = tune_job.tune_pipeline(pipeline, **kwargs)
    assert again["evaluation"] == first["evaluation"] and again["export"] == first["export"]
    assert any("evaluation was made by an earlier run" in line for line in lines)
    assert any("exported for TF Serving by an earlier run" in line for line in lines)
    with pytest.raises(RunExistsError, match=r"search.epochs: 1 -> 2.*--overwrite"):
        tune_job.tune_pipeline(pipeline, **{**kwargs, "epochs": 2})
    with pytest.raises(SettingsError, match=r"Unknown tuner. Expected one of .*Received: tuner='grid'"):
        tune_job.tune_pipeline(pipeline, **{**kwargs, "tuner": "grid"})
    replaced = tune_job.tune_pipeline(pipeline, **{**kwargs, "epochs": 2, "overwrite": True, "export": False})
    assert [t["status"] for t in replaced["tuning"]["trials"]] == ["COMPLETED"] and replaced["tuning"]["epochs"] == 2


def test_tune_pipeline_exports_the_best_trial(tmp_path, data_dir):
    report = _tune_one_epoch("tiny_pipeline.py", 3, tmp_path, data_dir)
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
    report = _tune_one_epoch("tiny_graph_pipeline.py", 2, tmp_path, data_dir)
    trials = report["tuning"]["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]
    multipliers = [t["hyperparameters"]["graph_multiplier"] for t in trials]
    assert all(0.1 <= m <= 10.0 for m in multipliers) and multipliers[0] != multipliers[1]
    metadata = json.loads((pathlib.Path(report["export"]) / "assets.extra" / "nsladv_metadata.json").read_text())
    best = report["tuning"]["best_hyperparameters"]["graph_multiplier"]
    assert metadata["graph"]["multiplier"] == best and metadata["graph"]["distance"] == "kl"
