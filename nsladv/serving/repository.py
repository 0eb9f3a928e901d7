"""Models and versions on disk, loaded and kept current as TF Serving does.

The repository reads a `models.config` (TF Serving's text format) or treats
every folder holding numeric version folders as a model. For each model it
serves the versions its policy names (latest N, all, or specific ones; latest
1 by default), resolves version labels, ignores non-numeric folders (such as
an export in progress), and, when polled, loads new versions before
publishing them and drops removed ones; requests in flight keep the version
they started with.
"""

import dataclasses
import pathlib
import threading

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from nsladv.errors import ModelNotFoundError
from nsladv.export import MODELS_CONFIG
from nsladv.export import SIGNATURE as DEFAULT_SIGNATURE
from nsladv.export import versions as version_folders
from nsladv.serving.errors import ServingError


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    """One loaded SavedModel version."""

    name: str
    version: int
    path: pathlib.Path
    loaded: object
    signature_defs: dict  # name -> tensorflow SignatureDef proto

    def signature(self, name):
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs or name not in self.loaded.signatures:
            raise ServingError(
                "FAILED_PRECONDITION",
                f'Serving signature key "{name}" not found. Model {self.name!r} version {self.version} '
                f"has {sorted(self.signature_defs)}.",
            )
        return self.loaded.signatures[name], self.signature_defs[name]


@dataclasses.dataclass
class _Model:
    name: str
    base_path: pathlib.Path
    policy: object  # FileSystemStoragePathSourceConfig.ServableVersionPolicy
    labels: dict
    versions: dict = dataclasses.field(default_factory=dict)  # int -> LoadedVersion


def _signature_defs(path):
    proto = saved_model_pb2.SavedModel.FromString((pathlib.Path(path) / "saved_model.pb").read_bytes())
    return dict(proto.meta_graphs[0].signature_def)


class ModelRepository:
    """The models a server serves, from a `saved_models/` folder or a models.config.

    Args:
        path: a folder with `models.config`, a folder of model folders, or one
            model folder (holding numeric versions), or a models.config file.
        load: load the versions now.

    A models.config written for a container (`base_path: "/models/mnist"`)
    is served locally from the folder beside the config whenever its
    base_path does not exist on this machine.
    """

    def __init__(self, path, *, load=True):
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        self._models = self._read_models()
        self._poller = None
        self._stop = threading.Event()
        if load:
            self.refresh()

    # Discovery -------------------------------------------------------------

    def _read_models(self):
        config_file = self.path if self.path.is_file() else self.path / MODELS_CONFIG
        if config_file.is_file():
            return self._from_config(config_file)
        if not self.path.is_dir():
            raise ModelNotFoundError(f"No saved models at {self.path}: expected a folder or a models.config file.")
        if version_folders(self.path):
            return {self.path.name: self._model(self.path.name, self.path)}
        models = {
            p.name: self._model(p.name, p) for p in sorted(self.path.iterdir()) if p.is_dir() and version_folders(p)
        }
        if not models:
            raise FileNotFoundError(
                f"No models under {self.path}: expected <name>/<version>/saved_model.pb folders or a models.config."
            )
        return models

    def _model(self, name, base_path, policy=None, labels=None):
        if policy is None:
            policy = model_server_config_pb2.ModelConfig().model_version_policy
            policy.latest.num_versions = 1
        return _Model(name, pathlib.Path(base_path), policy, dict(labels or {}))

    def _from_config(self, config_file):
        try:
            config = text_format.Parse(config_file.read_text(), model_server_config_pb2.ModelServerConfig())
        except text_format.ParseError as error:
            raise ValueError(f"{config_file} is not a valid TF Serving model config: {error}") from None
        models = {}
        for entry in config.model_config_list.config:
            base = pathlib.Path(entry.base_path)
            if not base.is_dir():
                base = config_file.parent / base.name
            policy = entry.model_version_policy
            if not policy.WhichOneof("policy_choice"):
                policy.latest.num_versions = 1
            models[entry.name] = self._model(entry.name, base, policy, entry.version_labels)
        return models

    def _wanted(self, model):
        available = version_folders(model.base_path)
        choice = model.policy.WhichOneof("policy_choice")
        if choice == "all":
            return available
        if choice == "specific":
            return [v for v in available if v in set(model.policy.specific.versions)]
        return available[-max(1, model.policy.latest.num_versions) :]

    # Loading ---------------------------------------------------------------

    def refresh(self):
        """Loads wanted versions not yet loaded and drops unwanted ones."""
        for model in self._models.values():
            wanted = self._wanted(model)
            fresh = {}
            for version in wanted:
                if version in model.versions:
                    continue
                path = model.base_path / str(version)
                fresh[version] = LoadedVersion(
                    model.name, version, path, tf.saved_model.load(str(path)), _signature_defs(path)
                )
            with self._lock:
                current = {v: lv for v, lv in model.versions.items() if v in wanted}
                current.update(fresh)
                model.versions = current  # Swapped whole: readers see old or new.

    def start_polling(self, seconds=2.0):
        """Refreshes every `seconds` in a background thread."""

        def poll():
            while not self._stop.wait(seconds):
                try:
                    self.refresh()
                except Exception as error:
                    print(f"nsladv serve: could not load a new version: {error}", flush=True)

        self._poller = threading.Thread(target=poll, name="nsladv-version-poller", daemon=True)
        self._poller.start()

    def stop(self):
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)

    # Lookup ----------------------------------------------------------------

    @property
    def names(self):
        return sorted(self._models)

    def _get(self, name):
        if name not in self._models:
            raise ServingError(
                "NOT_FOUND", f"Servable not found for request: Latest({name}). Models served: {self.names}."
            )
        return self._models[name]

    def resolve(self, name, version=None, label=None):
        """The `LoadedVersion` a request names (latest when neither is given)."""
        model = self._get(name)
        with self._lock:
            versions = model.versions
        if version is not None and label is not None:
            raise ServingError("INVALID_ARGUMENT", "Give a version or a version label, not both.")
        if label is not None:
            if label not in model.labels:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Unrecognized servable version label: {label}. Labels of {name!r}: {sorted(model.labels)}.",
                )
            version = model.labels[label]
        if version is None:
            if not versions:
                raise ServingError(
                    "NOT_FOUND", f"Servable not found for request: Latest({name}). No version is loaded."
                )
            return versions[max(versions)]
        if int(version) not in versions:
            raise ServingError(
                "NOT_FOUND",
                f"Servable not found for request: Specific({name}, {version}). Versions served: {sorted(versions)}.",
            )
        return versions[int(version)]

    def status(self, name, version=None, label=None):
        """[(version, state)] as TF Serving's GetModelStatus reports them."""
        if version is None and label is None:
            model = self._get(name)
            with self._lock:
                return [(v, "AVAILABLE") for v in sorted(model.versions, reverse=True)]
        return [(self.resolve(name, version, label).version, "AVAILABLE")]
