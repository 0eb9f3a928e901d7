"""Evaluations that survive a kill: each attack's answers kept on disk block by block, seeded per block.

A long evaluation (AutoAttack's standard version on 10,000 digits takes hours on
2 CPU cores) keeps what it finished in a folder as it goes: for every attack, at
every radius, one file per block of digits (`block_size` consecutive digits of
the evaluated set) with the rows it attacked, which of them stayed robust and
the smallest margin the attack reached. A rerun with the same folder loads the
finished blocks and attacks only the rest.

The answer does not depend on where a run stopped: each block's attack draws
its random starts from a seed of its own, made from the evaluation's seed, the
attack's place in the run, the radius and the block, never from a generator
carried over from the blocks before. So a run killed at any moment and
resumed gives the result of a run straight through, digit for digit. (Without
a folder, `evaluate_robustness` seeds each attack once for all its batches, as
before: the two ways draw different random starts, each reproducible.)

The folder's `manifest.json` records what the answers belong to: the attacks'
settings, the radii, the seed, the block size and fingerprints of the examples
and of the model's outputs. A folder that holds another evaluation is refused,
with what differs, rather than mixed in.
"""

import functools
import hashlib
import json
import pathlib
import time

import numpy as np

from nsladv._files import replace_file
from nsladv.errors import SettingsError
from nsladv.robustness.rows import attack_rows
from nsladv.settings_checks import integer

MANIFEST = "manifest.json"


class Straight:
    """No folder: each attack runs on all its rows at once, seeded once per attack (see `evaluate_robustness`)."""

    blocks_done = 0

    def attack(self, key, attacker, x, y, rows, batch_size, epsilon, epsilon_index, progress=None):
        return attack_rows(attacker, x, y, rows, batch_size, epsilon, progress)

    def seconds(self, key, measured):
        return measured


class Checkpoints:
    """Answers kept per (attack, radius, block) in `folder`; see the module's docstring.

    Args:
        folder: where the blocks are kept (created if missing).
        identity: what the answers belong to (a JSON-ready dict; the
            manifest); a folder holding another identity raises
            `SettingsError`.
        seed: the evaluation's seed, from which every block's is made.
        block_size: digits per block.
        on_block: called after each block it attacks as `on_block(key,
            epsilon, block, digits, left, seconds_left)`: the block's
            number and digits, the digits this attack still has to attack
            at this radius, and an estimate of the seconds that takes.
    """

    def __init__(self, folder, identity, *, seed, block_size=500, on_block=None):
        integer("block_size", block_size, error=SettingsError)
        self.folder = pathlib.Path(folder)
        self.seed = int(seed)
        self.block_size = block_size
        self.on_block = on_block
        self.identity = {**identity, "block_size": block_size, "seed": self.seed}
        self.blocks_done = 0  # blocks loaded from an earlier run
        self._seconds = {}
        self._check_manifest()

    def _check_manifest(self):
        path = self.folder / MANIFEST
        wanted = json.loads(json.dumps(self.identity))
        if path.is_file():
            found = json.loads(path.read_text())
            changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            if changed:
                raise SettingsError(
                    f"{self.folder} keeps the blocks of another evaluation (it differs in: {', '.join(changed)}). "
                    "Give this evaluation a folder of its own, or delete that one to start afresh "
                    "(nsladv evaluate: --overwrite)."
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        replace_file(path, json.dumps(wanted, indent=2))

    def attack(self, key, attacker, x, y, rows, batch_size, epsilon, epsilon_index, progress=None):
        """(robust, reached margin) for each of `rows`, block by block: loaded where kept, else attacked and kept.

        `key` names the attack's place in the run (e.g. `"2-apgd-t"`)."""
        robust = np.zeros(rows.size, bool)
        reached = np.full(rows.size, np.nan, np.float32)
        blocks = rows // self.block_size
        pending = [b for b in np.unique(blocks) if not self._path(key, epsilon_index, b).is_file()]
        left = int(np.isin(blocks, pending).sum())
        started, spent = time.perf_counter(), 0
        for block in np.unique(blocks):
            where = np.flatnonzero(blocks == block)
            path = self._path(key, epsilon_index, block)
            if path.is_file():
                with np.load(path) as kept:
                    if not np.array_equal(kept["rows"], rows[where]):
                        raise SettingsError(
                            f"{path} was attacked on other digits than this run attacks there: the folder belongs to "
                            "another evaluation. Delete it to start afresh."
                        )
                    robust[where], reached[where] = kept["robust"], kept["reached"]
                    self._seconds[key] = self._seconds.get(key, 0.0) + float(kept["seconds"])
                self.blocks_done += 1
                continue
            attacker.reseed(self.block_seed(key, epsilon_index, block))
            start = time.perf_counter()
            robust[where], reached[where] = attack_rows(attacker, x, y, rows[where], batch_size, epsilon, progress)
            seconds = time.perf_counter() - start
            self._seconds[key] = self._seconds.get(key, 0.0) + seconds
            kept = {"rows": rows[where], "robust": robust[where], "reached": reached[where], "seconds": seconds}
            replace_file(path, functools.partial(np.savez, **kept))
            spent += where.size
            left -= where.size
            if self.on_block is not None:
                rate = (time.perf_counter() - started) / spent
                self.on_block(key, epsilon, int(block), int(where.size), left, rate * left)
        return robust, reached

    def seconds(self, key, measured):
        """The attack's compute seconds over every run that made its blocks (this run's `measured` included)."""
        return round(self._seconds.get(key, measured), 3)

    def block_seed(self, key, epsilon_index, block):
        """The random seed of one block's attack: from the evaluation's seed, the attack, the radius and the block."""
        digest = hashlib.sha256(f"{self.seed}/{key}/{epsilon_index}/{int(block)}".encode()).digest()
        return int.from_bytes(digest[:4], "little") % (2**31 - 1)

    def _path(self, key, epsilon_index, block):
        return self.folder / key / f"radius{epsilon_index}" / f"block{int(block):05d}.npz"


def fingerprint(*arrays):
    """A short SHA-256 of arrays' bytes, shapes and types."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def model_fingerprint(model, input_shape):
    """A fingerprint of what the model computes: its float32 outputs on fixed random inputs."""
    probe = np.random.default_rng(1234).random((4, *input_shape), dtype=np.float32)
    return fingerprint(np.round(np.asarray(model(probe, training=False), np.float32), 4))
