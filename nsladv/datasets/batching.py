"""The tf.data pipeline a training job reads: cache, shuffle, augment, batch, prefetch."""

import tensorflow as tf


def random_shift(pixels):
    """An augmentation: shift images by up to `pixels` in each direction (zero fill)."""

    def shift(image, label):
        padded = tf.pad(image, [[pixels, pixels], [pixels, pixels], [0, 0]])
        return tf.image.random_crop(padded, tf.shape(image)), label

    return shift


def random_shift_batch(pixels):
    """`random_shift` for a batch: each image shifted by its own random offset (zero fill).

    For pipelines that gather images after batching (graph neighbors).
    """

    def shift(images):
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]])
        offsets = tf.cast(tf.random.uniform([batch, 2], 0, 2 * pixels + 1, dtype=tf.int32), tf.float32)
        size = tf.cast(tf.stack([height, width]), tf.float32)
        span = size + 2 * pixels - 1
        # Boxes on the pixel grid of the padded images: nearest sampling copies pixels exactly.
        boxes = tf.concat([offsets / span, (offsets + size - 1) / span], axis=1)  # [y1, x1, y2, x2]
        crops = tf.image.crop_and_resize(padded, boxes, tf.range(batch), tf.stack([height, width]), method="nearest")
        return tf.cast(crops, images.dtype)

    return shift


def input_pipeline(
    dataset,
    *,
    batch_size,
    training,
    seed=None,
    deterministic=None,
    cache=True,
    shuffle_buffer=10_000,
    drop_remainder=False,
    augment=None,
    batch_map=None,
):
    """The tf.data pipeline: cache, shuffle and augment (training), batch, prefetch.

    Auto-sharding is by data, so `strategy.experimental_distribute_dataset`
    splits batches across workers whatever the file layout.

    Args:
        dataset: a dataset of examples (not batched).
        batch_size: the global batch size.
        training: shuffle every epoch when True.
        seed: shuffle seed: pipelines built alike with one seed give the
            same batches, epoch after epoch.
        deterministic: keep element order through parallel maps and
            batching, and run `augment` and `batch_map` one element at a
            time, so that their random draws (stateful random ops) do not
            follow thread order. Default: True with a seed (else a seed
            would fix neither the order nor the draws) and for evaluation
            (`training=False`: attacks line up their results example by
            example, and a subset must be the same examples every time);
            False for unseeded training. The option reaches every parallel
            map upstream too (TFDS's decoding and scaling included).
        cache: cache decoded examples in memory after the first epoch.
        shuffle_buffer: shuffle buffer size.
        drop_remainder: drop the last partial batch (static batch shapes,
            e.g. for TPUs).
        augment: an `(image, label) -> (image, label)` map applied after
            the cache when training (e.g. `random_shift(2)`).
        batch_map: a map applied to each batch (e.g. gathering features
            and graph neighbors for a batch of row indices).
    """
    if deterministic is None:
        deterministic = seed is not None or not training
    # A stateful random op called from parallel threads draws in thread order.
    maps_in_parallel = None if deterministic else tf.data.AUTOTUNE
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if augment is not None:
            dataset = dataset.map(augment, num_parallel_calls=maps_in_parallel)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_map is not None:
        dataset = dataset.map(batch_map, num_parallel_calls=maps_in_parallel)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
