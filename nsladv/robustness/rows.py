"""What the cascade, the retry and the checks share: attacking rows of an in-memory set, and reading results."""

import numpy as np
import tensorflow as tf

from nsladv.robustness.base import logits_of
from nsladv.robustness.base import true_class_margin


def clean_margins(model, x, y, batch_size, from_logits):
    """Whether the model classifies each example correctly (clean), and its `true_class_margin` there (in logits, or
    log-probabilities, as the attacks measure it)."""
    logits = np.concatenate(
        [
            np.asarray(logits_of(model, tf.constant(x[i : i + batch_size]), from_logits))
            for i in range(0, len(y), batch_size)
        ]
    )
    return np.argmax(logits, axis=-1) == y, true_class_margin(logits, y).numpy()


def attack_rows(attacker, x, y, rows, batch_size, epsilon, progress=None):
    """Robust (correct clean and under the attack) for each of `rows`, attacked in batches, and the smallest margin
    the attack reached there (NaN where it does not track it). `progress(done, total)` follows the batches: they
    are then handed to the attacker one at a time, in the same order, which draws the same random starts."""
    if progress is None:
        subset = tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(batch_size)
        _, robust, reached = attacker.masks_and_margins(subset, epsilon)
        return robust, reached
    parts = []
    progress(0, rows.size)
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        if hasattr(attacker, "on_progress"):  # a long per-batch search (Square) also reports within its batch
            attacker.on_progress = lambda share, start=start, n=chunk.size: progress(start + int(share * n), rows.size)
        batch = tf.data.Dataset.from_tensor_slices((x[chunk], y[chunk])).batch(batch_size)
        parts.append(attacker.masks_and_margins(batch, epsilon)[1:])
        progress(min(start + batch_size, rows.size), rows.size)
    if hasattr(attacker, "on_progress"):
        attacker.on_progress = None
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def robust_rows(attacker, x, y, rows, batch_size, epsilon):
    """Robust (correct clean and under the attack) for each of `rows`, attacked in batches."""
    return attack_rows(attacker, x, y, rows, batch_size, epsilon)[0]


def radius_key(epsilon):
    return f"{epsilon:g}"


def gradient_steps(attack_result):
    """Gradient steps of an attack from its reported settings (None for a black-box attack)."""
    config = attack_result.get("config", {})
    if config.get("black_box"):
        return None
    if "threat" in config:
        return config["threat"]["steps"]
    return config.get("steps")
