"""What a job has finished, on disk, so that a rerun picks up at its first unfinished phase.

A run folder holds `state.json` (finished phases and their results), the
trained models' weights and each model's evaluation. Every file is written
under a temporary name and renamed, so a kill at any moment leaves either
the old file or the new one. The state remembers the settings it was made
with. A rerun with other training settings stops with a `RunExistsError`
that names what changed, unless it is asked to overwrite: trained models are
never deleted silently. A rerun with other evaluation settings keeps the
trained models and evaluates again; every evaluation is kept, filed under
its settings, so going back to earlier settings reuses it.
"""

import hashlib
import json
import os
import pathlib
import shutil

from nsladv.errors import RunExistsError
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
        training: JSON-ready settings that shape the trained models.
        evaluation: JSON-ready settings that shape the evaluations.
        writer: whether this process writes (the chief of a cluster); the
            others only read.
        overwrite: with other training settings than the folder's, delete its
            trained models, evaluations and backup and start afresh (else
            raise `RunExistsError`).
        overwrite_hint: how the caller asks for `overwrite`, for the error.
    """

    def __init__(self, out_dir, *, training, evaluation, writer=True, overwrite=False, overwrite_hint="overwrite=True"):
        self.out_dir = pathlib.Path(out_dir)
        self.writer = writer
        self.discarded = []
        path = self.out_dir / STATE_FILE
        state = json.loads(path.read_text()) if path.is_file() else {}
        training_key, self.evaluation_key = fingerprint(training), fingerprint(evaluation)
        if state and state.get("training") != training_key:
            if not overwrite:
                raise RunExistsError(
                    f"{self.out_dir} holds a run trained with other settings ({_changes(state, training)}); "
                    f"its trained models and evaluations are kept. Choose another run folder (--out DIR, or "
                    f"--name NAME), or pass {overwrite_hint} to replace it. Received: out_dir={str(self.out_dir)!r}"
                )
            self.discarded.append("trained models")
            state = {}
            self._remove("models", "evaluations", "backup")
        self._state = {
            "training": training_key,
            "training_settings": training,
            "trained": {},
            "evaluated": {},
            "exports": {},
            **state,
        }
        self._state["evaluation"] = self.evaluation_key
        self._state["evaluated"].setdefault(self.evaluation_key, {})

    def begin(self):
        """Records the settings before the first phase starts.

        Not left to the first finished phase: a run killed during its first
        training leaves a backup that a rerun with other settings must not
        resume. Not at construction either: a job whose checks fail leaves
        no folder.
        """
        if self.writer:
            self._write()

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
        """(evaluation, seconds) of a model under the current evaluation settings, or None."""
        path = self._evaluation_path(label)
        done = self._state["evaluated"][self.evaluation_key]
        if label not in done or not path.is_file():
            return None
        return json.loads(path.read_text()), done[label]

    def save_evaluation(self, label, evaluation, seconds):
        if not self.writer:
            return
        write_json(self._evaluation_path(label), evaluation)
        self._state["evaluated"][self.evaluation_key][label] = seconds
        self._write()

    def _evaluation_path(self, label):
        return self.out_dir / "evaluations" / self.evaluation_key / f"{label}.json"

    # Export ---------------------------------------------------------------------------

    @property
    def export(self):
        """The version folder this run exported under the current evaluation settings, if it is still there."""
        path = self._state["exports"].get(self.evaluation_key)
        return path if path and pathlib.Path(path).is_dir() else None

    def save_export(self, path):
        if self.writer:
            self._state["exports"][self.evaluation_key] = str(path)
            self._write()

    def _write(self):
        write_json(self.out_dir / STATE_FILE, self._state)

    def _remove(self, *names):
        if self.writer:
            for name in names:
                shutil.rmtree(self.out_dir / name, ignore_errors=True)


def _changes(state, training):
    """What differs between a folder's training settings and the new ones, in words."""
    old = state.get("training_settings")
    if not isinstance(old, dict):
        return "settings not recorded"
    old, training = _flat(old), _flat(training)
    changed = [key for key in sorted(set(old) | set(training)) if old.get(key) != training.get(key)]
    shown = [f"{key}: {_short(old.get(key))} -> {_short(training.get(key))}" for key in changed[:3]]
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return "; ".join(shown) + more if shown else "settings not recorded"


def _flat(settings, prefix=""):
    """Nested settings as {"threat.epsilon": 0.3, ...}."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value, width=40):
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."
