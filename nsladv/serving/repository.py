"""Models and versions on disk, loaded, labelled and reported as TF Serving does.

A repository holds a TF Serving `ModelServerConfig` (a model config list).
It starts from a `models.config` file (TF Serving's `--model_config_file`,
read strictly: every `base_path` must exist as written) or from a folder,
where each folder holding numeric version folders becomes one model (as
TF Serving's `--model_base_path` does for one model); a `models.config`
inside such a folder is not read, since its base paths name the container's
folders.

For each model it serves the versions its policy names (latest N, all, or
specific ones; latest 1 by default), ignoring non-numeric folders (such as an
export in progress). `refresh()` (polled) loads new versions before
publishing them and unloads removed ones; requests in flight keep the
version they started with. Every version a model has had keeps its state
(START, LOADING, AVAILABLE, UNLOADING, END) and, if it failed to load, the
error. `reload(config)` swaps the whole config as TF Serving's
`HandleReloadConfigRequest` does: models come and go, and a version label can
only point at an AVAILABLE version unless
`allow_version_labels_for_unavailable_models` (the flag of that name) allows
a new label to wait for its version.
"""

import dataclasses
import pathlib
import threading
import time

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

from nsladv.errors import ModelNotFoundError
from nsladv.export import MODELS_CONFIG
from nsladv.export import SIGNATURE as DEFAULT_SIGNATURE
from nsladv.export import versions as version_folders
from nsladv.serving.errors import ServingError
from nsladv.serving.errors import op_error_code

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


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


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """A version's state as GetModelStatus reports it; a failed load ends in END with its error."""

    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class _Model:
    name: str
    base_path: pathlib.Path
    policy: object  # FileSystemStoragePathSourceConfig.ServableVersionPolicy
    labels: dict  # label -> version


def _signature_defs(path):
    proto = saved_model_pb2.SavedModel.FromString((pathlib.Path(path) / "saved_model.pb").read_bytes())
    return dict(proto.meta_graphs[0].signature_def)


def read_config_file(path):
    """The `ModelServerConfig` of a TF Serving `--model_config_file` (text format)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"No model config file at {path}: expected a ModelServerConfig in text format.")
    try:
        return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{path} is not a valid TF Serving model config: {error}") from None


def folder_config(path):
    """The `ModelServerConfig` serving every model folder under `path` (or `path` itself, if it holds versions)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"No saved models at {path}: expected a folder or a models.config file.")
    if version_folders(path):
        folders = [path]
    else:
        folders = [p for p in sorted(path.iterdir()) if p.is_dir() and version_folders(p)]
    if not folders:
        raise FileNotFoundError(
            f"No models under {path}: expected <name>/<version>/saved_model.pb folders"
            + (
                f" ({path / MODELS_CONFIG} is read with --model_config_file)"
                if (path / MODELS_CONFIG).is_file()
                else ""
            )
            + "."
        )
    config = model_server_config_pb2.ModelServerConfig()
    for folder in folders:
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = folder.name, str(folder.resolve()), "tensorflow"
    return config


def single_model_config(name, base_path):
    """The `ModelServerConfig` of TF Serving's `--model_name NAME --model_base_path PATH`: one model, latest version."""
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = name, str(pathlib.Path(base_path).resolve()), "tensorflow"
    return config


def _error_code(error):
    """The TF Serving status name of a load failure."""
    if isinstance(error, tf.errors.OpError):
        return op_error_code(error)
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
        return "NOT_FOUND"
    if isinstance(error, (ValueError, KeyError)):
        return "INVALID_ARGUMENT"
    return "UNKNOWN"


class ModelRepository:
    """The models a server serves.

    Args:
        path: a folder of model folders, one model folder, or a models.config file.
        config_file: a TF Serving model config file (instead of `path`).
        config: a `ModelServerConfig` (instead of `path`; e.g. `single_model_config`).
        allow_version_labels_for_unavailable_models: as TF Serving's flag:
            a label new to a model may name a version that is not loaded yet.
        on_change: called (no arguments) after a refresh or reload that
            loaded, failed to load or unloaded a version, in the thread that
            made the change.

    Raises:
        ServingError: the config names a base path that does not exist
            (INVALID_ARGUMENT) or labels a version that is not available
            (FAILED_PRECONDITION), as TF Serving refuses to start with them.
    """

    def __init__(
        self,
        path=None,
        *,
        config_file=None,
        config=None,
        allow_version_labels_for_unavailable_models=False,
        on_change=None,
    ):
        if sum(x is not None for x in (path, config_file, config)) != 1:
            raise ValueError(
                "Give a folder, a config file or a config. "
                f"Received: path={path!r}, config_file={config_file!r}, config={'set' if config else None}"
            )
        if path is not None and pathlib.Path(path).is_file():
            path, config_file = None, path
        sources = (path, config_file, config.model_config_list.config[0].base_path if config is not None else None)
        self.path = pathlib.Path(next(s for s in sources if s is not None))
        self.config_file = None if config_file is None else pathlib.Path(config_file)
        self.allow_version_labels_for_unavailable_models = allow_version_labels_for_unavailable_models
        self._lock = threading.Lock()  # guards the published dicts (swapped whole)
        self._changing = threading.RLock()  # one refresh or reload at a time
        self._models = {}  # name -> _Model
        self._loaded = {}  # name -> {version: LoadedVersion}
        self._states = {}  # name -> {version: VersionStatus}, kept after a model leaves the config
        self.config = model_server_config_pb2.ModelServerConfig()
        self._poller = None
        self._stop = threading.Event()
        self.on_change = on_change
        self._changes = 0  # versions loaded, failed or unloaded so far
        if config is None:
            config = read_config_file(self.config_file) if self.config_file else folder_config(self.path)
        self.reload(config)

    # Configuration -----------------------------------------------------------

    def _models_of(self, config):
        kind = config.WhichOneof("config")
        if kind != "model_config_list":
            raise ServingError(
                "INVALID_ARGUMENT",
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                f"currently supported. Received: {kind or 'an empty config'}",
            )
        models = {}
        for entry in config.model_config_list.config:
            if not entry.name:
                raise ServingError("INVALID_ARGUMENT", f"Every model config needs a name. Received: {entry}")
            if entry.name in models:
                raise ServingError(
                    "INVALID_ARGUMENT", f"Illegal to list model {entry.name} multiple times in config list"
                )
            if entry.model_platform not in ("", "tensorflow"):
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Model {entry.name}: model_platform must be 'tensorflow'. Received: {entry.model_platform!r}",
                )
            base = pathlib.Path(entry.base_path)
            if not entry.base_path or not base.is_absolute():
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Expected model {entry.name} to have an absolute path or URI; got base_path()={entry.base_path}",
                )
            if not base.exists():
                raise ServingError(
                    "INVALID_ARGUMENT", f"Could not find base path {entry.base_path} for servable {entry.name}"
                )
            policy = type(entry.model_version_policy)()
            policy.CopyFrom(entry.model_version_policy)
            if not policy.WhichOneof("policy_choice"):
                policy.latest.num_versions = 1
            models[entry.name] = _Model(entry.name, base, policy, dict(entry.version_labels))
        return models

    def reload(self, config):
        """Serves `config` (a `ModelServerConfig`) instead of the current one.

        New models' wanted versions are loaded before this returns; removed
        models are unloaded; labels move only to AVAILABLE versions. A
        refused config changes nothing.

        Raises:
            ServingError: with TF Serving's code and words.
        """
        with self._changing:
            before = self._changes
            models = self._models_of(config)
            self._check_labels(models)
            self._refresh(models)  # new models' versions load before they are published
            with self._lock:
                old = self._models
                self._models = models
                self.config = config
            for name in sorted(set(old) - set(models)):
                self._unload(name, sorted(self._loaded.get(name, {})))
            self._changed(before)

    def _check_labels(self, models):
        for model in models.values():
            available = {v for v, s in self._states.get(model.name, {}).items() if s.state == "AVAILABLE"}
            current = self._models.get(model.name)
            for label, version in sorted(model.labels.items()):
                if version in available:
                    continue
                moved = current is not None and current.labels.get(label, version) != version
                if self.allow_version_labels_for_unavailable_models and not moved:
                    continue
                raise ServingError(
                    "FAILED_PRECONDITION",
                    f"Request to assign label to version {version} of model {model.name}, "
                    "which is not currently available for inference",
                )

    def _wanted(self, model):
        available = version_folders(model.base_path)
        choice = model.policy.WhichOneof("policy_choice")
        if choice == "all":
            return available
        if choice == "specific":
            return [v for v in available if v in set(model.policy.specific.versions)]
        return available[-max(1, model.policy.latest.num_versions) :]

    # Loading ---------------------------------------------------------------

    def _set_state(self, name, version, status):
        with self._lock:
            states = dict(self._states.get(name, {}))
            states[version] = status
            self._states[name] = states

    def refresh(self):
        """Loads wanted versions not yet loaded and unloads unwanted ones.

        A version that failed to load stays in END with its error and is not
        retried while its folder stays; the others keep serving.
        """
        with self._changing:
            before = self._changes
            self._refresh(self._models)
            self._changed(before)

    def _changed(self, before):
        if self._changes != before and self.on_change is not None:
            self.on_change()

    def _refresh(self, models):
        for model in list(models.values()):
            if not model.base_path.is_dir():
                continue  # TF Serving logs the failed poll and keeps what it serves.
            wanted = self._wanted(model)
            states = self._states.get(model.name, {})
            loaded = self._loaded.get(model.name, {})
            for version in wanted:
                failed = version in states and states[version].error_code != "OK"
                current = version in loaded and loaded[version].path.parent == model.base_path
                if not (current or failed):
                    self._load(model, version)  # new, or from a base path the config moved
            loaded = self._loaded.get(model.name, {})
            unwanted = [v for v in loaded if v not in wanted]
            if unwanted and not set(wanted) & set(loaded):
                # TF Serving's default AvailabilityPreservingPolicy: the newest version serves on until a
                # wanted one is AVAILABLE (a new version that fails to load leaves the old one serving).
                unwanted.remove(max(unwanted))
            self._unload(model.name, unwanted)
            # A failed version no longer wanted (its folder went away) may load again if it comes back.
            with self._lock:
                self._states[model.name] = {
                    v: s for v, s in self._states.get(model.name, {}).items() if v in wanted or s.error_code == "OK"
                }

    def _load(self, model, version):
        self._changes += 1
        path = model.base_path / str(version)
        self._set_state(model.name, version, VersionStatus("START"))
        self._set_state(model.name, version, VersionStatus("LOADING"))
        try:
            loaded = LoadedVersion(model.name, version, path, tf.saved_model.load(str(path)), _signature_defs(path))
        except Exception as error:
            message = f"Failed to load servable version {version} of {model.name} from {path}: {error}"
            self._set_state(model.name, version, VersionStatus("END", _error_code(error), message.strip()))
            print(f"nsladv serve: {message.strip()}", flush=True)  # as TF Serving logs it; the status keeps it
            return
        with self._lock:
            versions = dict(self._loaded.get(model.name, {}))
            versions[version] = loaded
            self._loaded[model.name] = versions  # Swapped whole: readers see old or new.
        self._set_state(model.name, version, VersionStatus("AVAILABLE"))

    def _unload(self, name, versions):
        for version in versions:
            self._changes += 1
            self._set_state(name, version, VersionStatus("UNLOADING"))
            with self._lock:
                self._loaded[name] = {v: lv for v, lv in self._loaded[name].items() if v != version}
            self._set_state(name, version, VersionStatus("END"))

    def start_polling(self, seconds=2.0, *, config_seconds=None):
        """Refreshes versions every `seconds`, and rereads the config file every `config_seconds`."""

        config_seconds = config_seconds if self.config_file is not None else None
        periods = {"config": config_seconds, "versions": seconds}
        periods = {k: v for k, v in periods.items() if v}

        def poll():
            due = {k: time.monotonic() + v for k, v in periods.items()}
            while not self._stop.wait(max(0.0, min(due.values()) - time.monotonic())):
                now = time.monotonic()
                try:
                    if "config" in due and now >= due["config"]:
                        due["config"] = now + periods["config"]
                        self.poll_config_file()
                    if "versions" in due and now >= due["versions"]:
                        due["versions"] = now + periods["versions"]
                        self.refresh()
                except Exception as error:  # the server keeps serving what it has
                    print(f"nsladv serve: {error}", flush=True)

        if not periods:
            return
        self._poller = threading.Thread(target=poll, name="nsladv-poller", daemon=True)
        self._poller.start()

    def poll_config_file(self):
        """Reloads the config file if it changed (`--model_config_file_poll_wait_seconds`)."""
        config = read_config_file(self.config_file)
        if config != self.config:
            self.reload(config)

    def stop(self):
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)

    # Lookup ----------------------------------------------------------------

    @property
    def names(self):
        return sorted(self._models)

    def _get(self, name):
        model = self._models.get(name)
        if model is None:
            raise ServingError(
                "NOT_FOUND", f"Servable not found for request: Latest({name}). Models served: {self.names}."
            )
        return model

    def resolve(self, name, version=None, label=None):
        """The `LoadedVersion` a request names (latest when neither is given)."""
        model = self._get(name)
        versions = self._loaded.get(name, {})
        if version is not None and label is not None:
            raise ServingError("INVALID_ARGUMENT", "Give a version or a version label, not both.")
        if label is not None:
            if label not in model.labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
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

    def status(self, name, version=None):
        """[(version, VersionStatus)], newest first, as TF Serving's GetModelStatus reports them.

        Every version the model has had is listed, unloaded and failed ones
        in END; a model that left the config keeps its versions' END states.
        """
        states = self._states.get(name, {})
        if version is not None:
            if int(version) not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
            return [(int(version), states[int(version)])]
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return sorted(states.items(), reverse=True)
