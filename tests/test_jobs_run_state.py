"""A run folder's finished phases: kept across reruns, refused or replaced when the training settings change."""

import json

import pytest

from nsladv.errors import RunExistsError
from nsladv.jobs.run_state import STATE_FILE
from nsladv.jobs.run_state import RunState

TRAINING = {"threat": {"epsilon": 0.3}, "epochs": 10}
EVALUATION = {"eval_epsilons": [0.3]}


def test_a_run_killed_before_its_first_phase_ended_still_refuses_other_settings(tmp_path):
    """A kill during the first training leaves only its backup; a rerun with other settings must not resume it."""
    RunState(tmp_path, training=TRAINING, evaluation=EVALUATION).begin()
    (tmp_path / "backup" / "hardened").mkdir(parents=True)  # what Keras' BackupAndRestore left
    assert json.loads((tmp_path / STATE_FILE).read_text())["training_settings"] == TRAINING
    other = {**TRAINING, "threat": {"epsilon": 0.1}}
    with pytest.raises(RunExistsError, match=r"threat.epsilon: 0.3 -> 0.1.*Received: out_dir="):
        RunState(tmp_path, training=other, evaluation=EVALUATION)
    assert (tmp_path / "backup" / "hardened").is_dir()  # nothing lost
    replaced = RunState(tmp_path, training=other, evaluation=EVALUATION, overwrite=True)
    assert replaced.discarded == ["trained models"] and not (tmp_path / "backup").exists()
    replaced.begin()
    # The same settings again: the folder is resumed, not refused.
    assert RunState(tmp_path, training=other, evaluation=EVALUATION).discarded == []


def test_finished_phases_are_kept_per_evaluation_setting(tmp_path):
    state = RunState(tmp_path, training=TRAINING, evaluation=EVALUATION)
    state.save_evaluation("hardened", {"worst_case": 0.9}, 12.5)
    again = RunState(tmp_path, training=TRAINING, evaluation={"eval_epsilons": [0.1]})
    assert again.evaluation("hardened") is None
    back = RunState(tmp_path, training=TRAINING, evaluation=EVALUATION)
    assert back.evaluation("hardened") == ({"worst_case": 0.9}, 12.5)


def test_nothing_is_written_before_the_first_phase_begins_nor_by_a_reader(tmp_path):
    RunState(tmp_path / "run", training=TRAINING, evaluation=EVALUATION)
    assert not (tmp_path / "run").exists()  # a job whose checks fail leaves no folder
    RunState(tmp_path / "run", training=TRAINING, evaluation=EVALUATION, writer=False).begin()
    assert not (tmp_path / "run").exists()
