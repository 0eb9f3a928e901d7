"""Choosing a `tf.distribute` strategy by name; nsladv adds no engine of its own.

The wrapper is strategy-agnostic: build and compile it inside
`strategy.scope()` and Keras runs its train step once per replica. Neighbors
are built per replica from that replica's batch; Keras losses already scale
by 1 / replicas and NSL's distances are scaled the same way, so gradients
summed across replicas are those of the global batch.
"""

import json
import os

import keras
import tensorflow as tf

from nsladv import _keras
from nsladv.errors import StrategyError
from nsladv.errors import StrategyUnavailableError

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def _workers_in_tf_config():
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except ValueError:
        raise StrategyError(
            f"TF_CONFIG is not valid JSON. Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}"
        ) from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def make_strategy(name="auto", *, tpu=None):
    """A `tf.distribute.Strategy` by name.

    Args:
        name: `"auto"` (multi-worker when TF_CONFIG lists several workers,
            mirrored with several GPUs, else the default strategy),
            `"default"`, `"mirrored"` (all local GPUs, or CPU),
            `"multiworker"` (the cluster in TF_CONFIG) or `"tpu"`.
        tpu: the TPU name or address for `"tpu"` (None: the local TPU or
            the one the environment names).

    Raises:
        StrategyError (a ValueError): unknown name, or `"multiworker"`
            without a valid TF_CONFIG.
        StrategyUnavailableError (a RuntimeError): `"tpu"` and no TPU could
            be reached.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"Unknown strategy. Expected one of {list(STRATEGIES)}. Received: strategy={name!r}")
    if name == "auto":
        if _workers_in_tf_config() > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if _workers_in_tf_config() == 0:
            raise StrategyError(
                "strategy='multiworker' reads the cluster from TF_CONFIG, which lists no workers. Set TF_CONFIG to "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}} on '
                f"each machine. Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as error:
        raise StrategyUnavailableError(
            "strategy='tpu' found no TPU to connect to. Run on a TPU VM, or name the TPU with tpu=... "
            f"(--tpu). Received: tpu={tpu!r} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this process writes checkpoints, reports and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def is_multi_worker(strategy):
    """Whether `strategy` spans several worker processes."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    cluster = resolver.cluster_spec().as_dict()
    return len(cluster.get("chief", [])) + len(cluster.get("worker", [])) > 1


class ClusterBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` for a cluster: every worker restores the chief's backup, only the chief writes it.

    With one backup per worker, a worker killed between two epoch ends leaves
    backups one epoch apart and the restarted cluster deadlocks; restoring
    everyone from the chief's keeps them in step. On one process it is
    Keras' `BackupAndRestore`.

    Args:
        backup_dir: the shared backup folder.
        chief: whether this process writes (see `is_chief`).
        **kwargs: for `keras.callbacks.BackupAndRestore`.
    """

    def __init__(self, backup_dir, *, chief=True, **kwargs):
        if not chief and not _keras.backup_save_hook_exists():  # pragma: no cover - depends on Keras
            raise NotImplementedError(
                "A read-only cluster backup overrides keras.callbacks.BackupAndRestore._save_model (Keras 3.x, "
                f"tested with 3.15), which this Keras lacks. Installed: keras {keras.__version__}"
            )
        super().__init__(backup_dir, **kwargs)
        self.chief = chief

    def _save_model(self):
        if self.chief:
            super()._save_model()

    def on_train_end(self, logs=None):
        if self.chief:
            super().on_train_end(logs)
