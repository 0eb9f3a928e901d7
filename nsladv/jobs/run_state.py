"""What a job has finished, on disk, so that a rerun picks up at its first unfinished phase.

A run folder holds `state.json` (finished phases and their results), the
trained models' weights and each model's evaluation. Every file is written
under a temporary name and renamed, so a kill at any moment leaves either
the old file or the new one. The state remembers the settings it was made
with: a rerun with other training settings starts afresh, and one with other
evaluation settings keeps the trained models and evaluates again.
"""

import hashlib
import json
import os
import pathlib
import shutil

from nsladv.jobs.report import write_json

STATE_FILE = "state.json"


def fingerprint(settings):
    """A short stable hash of JSON-ready settings."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunState:
    """The finished phases of one run folder.

    Args:
        out_dir: the run folder.
        training: fingerprint of everything that shapes the trained models.
        evaluation: fingerprint of everything that shapes the evaluations.
        writer: whether this process writes (the chief of a cluster); the
            others only read.
    """

    def __init__(self, out_dir, *, training, evaluation, writer=True):
        self.out_dir = pathlib.Path(out_dir)
        self.writer = writer
        self.discarded = []
        path = self.out_dir / STATE_FILE
        state = json.loads(path.read_text()) if path.is_file() else {}
        if state and state.get("training") != training:
            self.discarded.append("trained models")
            state = {}
            self._remove("models", "evaluations", "backup")
        if state and state.get("evaluation") != evaluation:
            self.discarded.append("evaluations")
            state = {key: state[key] for key in ("training", "trained", "training_logs") if key in state}
            self._remove("evaluations")
        self._state = {"training": training, "evaluation": evaluation, "trained": {}, "evaluated": {}, **state}

    # Trained models ------------------------------------------------------------

    def weights_path(self, label):
        return self.out_dir / "models" / f"{label}.weights.h5"

    def trained_seconds(self, label):
        """Seconds the model took to train, or None if it is not trained yet."""
        return self._state["trained"].get(label) if self.weights_path(label).is_file() else None

    def training_log(self, label):
        """What the training of a model recorded besides its weights (e.g. robust accuracy per epoch), or None."""
        return self._state.get("training_logs", {}).get(label)

    def save_model(self, label, model, seconds, training_log=None):
        if not self.writer:
            return
        path = self.weights_path(label)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".partial-{path.name}")
        model.save_weights(partial)
        os.replace(partial, path)
        self._state["trained"][label] = seconds
        if training_log is not None:
            self._state.setdefault("training_logs", {})[label] = training_log
        self._write()

    # Evaluations ------------------------------------------------------------------

    def evaluation(self, label):
        """(evaluation, seconds) of a model, or None."""
        path = self.out_dir / "evaluations" / f"{label}.json"
        if label not in self._state["evaluated"] or not path.is_file():
            return None
        return json.loads(path.read_text()), self._state["evaluated"][label]

    def save_evaluation(self, label, evaluation, seconds):
        if not self.writer:
            return
        write_json(self.out_dir / "evaluations" / f"{label}.json", evaluation)
        self._state["evaluated"][label] = seconds
        self._write()

    # Export ---------------------------------------------------------------------------

    @property
    def export(self):
        """The exported version folder of this run, if it was exported and is still there."""
        path = self._state.get("export")
        return path if path and pathlib.Path(path).is_dir() else None

    def save_export(self, path):
        if self.writer:
            self._state["export"] = str(path)
            self._write()

    def _write(self):
        write_json(self.out_dir / STATE_FILE, self._state)

    def _remove(self, *names):
        if self.writer:
            for name in names:
                shutil.rmtree(self.out_dir / name, ignore_errors=True)
