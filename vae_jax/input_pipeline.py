"""Image data sets for the VAEs: TFDS (and two embedded data sets) -> uint8 numpy -> device.

Data flow::

    load_dataset(name)            host, once: every split decoded into uint8 numpy arrays
      -> ImageDataset             train / validation / test, [N, H, W, C] uint8 levels
      -> shard_for_process        host: the contiguous block of rows this process holds
      -> (training loop)          device_put as uint8; on device x = levels * dataset.scale
      -> dynamic_binarize         on device, every step, when binarization="dynamic"
      -> uniform_dequantize       on device, every step, when dequantize: (k + u) / num_levels

    For TFDS data sets over the memory budget (compare dataset_nbytes(name, split="train")
    with it before loading anything):

    load_dataset(name, train_in_memory=False)
                                  validation and test in memory as above; train left empty,
                                  named instead by ImageDataset.train_split ("train[:55000]")
      -> stream_batches(name, split=dataset.train_split)
                                  tf.data reads this process's sub-split, shuffles, batches
                                  and yields [B_local, H, W, C] uint8 numpy batches
                                  ("sprites": rendered on the host instead, see below).

The validation hold-out differs between the two: in memory it is a permutation of the TFDS
train split drawn from `seed`; when streaming it is the contiguous tail of that split
(`train[55000:]`), the only kind of hold-out a TFDS split string can exclude from the stream.

Pixels stay integer levels 0..num_levels-1 on the host and on the device (a quarter of the
bytes of float32); `ImageDataset.scale = 1 / (num_levels - 1)` maps them to [0, 1].

Data sets by name:

* "digits" (the default; embedded, never downloaded): `sklearn.datasets.load_digits`, 1,797
  real 8x8 handwritten digits with levels 0..16 (num_levels=17). It has no official test
  split, so a fixed one of `DIGITS_TEST_SIZE` = 297 images is drawn with `DIGITS_TEST_SEED`
  (the same for every run and every `seed`); validation is held out of the other 1,500.
* "mnist", "fashion_mnist", "cifar10": TFDS, 8-bit (num_levels=256).
* "binarized_mnist": TFDS's fixed binarisation of MNIST (Larochelle & Murray, 2011) with its
  official train / validation / test splits (50,000 / 10,000 / 10,000); num_levels=2.
* "sprites" (embedded, rendered on demand, no TensorFlow): `ground_truth.Sprites`, a
  procedural dSprites, binary 64x64 (num_levels=2). Its 737,280 factor combinations form a
  virtual data set with a fixed test split of `SPRITES_TEST_SIZE` = 10,000 combinations and a
  "train" split of the other 727,280, both drawn with `SPRITES_SPLIT_SEED` (the same for every
  run and every `seed`); "train" is in a fixed shuffled order and, like a TFDS split, can be
  sliced ("train[:717280]"). Its 2.98 GB exceed the default memory budget, so training
  streams it: the validation hold-out is the tail of "train", and `stream_batches` renders
  each batch on the host from its rows, the order of epoch e a permutation drawn from
  (seed, e), so skip_batches costs nothing. Under a budget that holds the 2.98 GB it is
  rendered into memory whole and trained on like any other data set. Labels are the shape factor
  (0 square, 1 ellipse, 2 heart).
* any other TFDS data set with a fixed-shape uint8 "image" feature, by its TFDS name.

TFDS data sets are read from `data_dir` (None: `$TFDS_DATA_DIR` if set, else TFDS's default,
~/tensorflow_datasets). With `download=False` (the default) nothing is fetched: missing data
raises `DatasetNotFoundError` at once, naming the directory searched.

TensorFlow and TFDS are imported lazily, so runs on "digits" or "sprites" never import
TensorFlow. When they are imported, GPUs are hidden from TensorFlow so that it leaves their
memory to JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
import os
import re
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import fastpath, ground_truth

DIGITS_NUM_IMAGES = 1797
DIGITS_TEST_SIZE = 297
DIGITS_TEST_SEED = 0
SPRITES_NUM_IMAGES = math.prod(ground_truth.Sprites.factor_sizes)  # 737,280
SPRITES_TEST_SIZE = 10_000
SPRITES_SPLIT_SEED = 0
BINARIZATIONS = ("none", "static", "dynamic")


@dataclasses.dataclass(frozen=True)
class _Builtin:
    """What is known about a built-in data set before reading it."""

    num_levels: int
    official_validation: bool = False


BUILTIN_DATASETS = {
    "digits": _Builtin(num_levels=17),
    "mnist": _Builtin(num_levels=256),
    "fashion_mnist": _Builtin(num_levels=256),
    "binarized_mnist": _Builtin(num_levels=2, official_validation=True),
    "cifar10": _Builtin(num_levels=256),
    "sprites": _Builtin(num_levels=2),
}


class DatasetNotFoundError(FileNotFoundError):
    """A TFDS data set is not prepared in the data directory, and download=False.

    Not `tfds.core.DatasetNotFoundError`, which TFDS raises for a name it does not know (this
    module turns that one into a ValueError).
    """


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """An image data set held in host memory as integer levels (train possibly streamed).

    Attributes:
        name: the name given to `load_dataset`.
        train: [N_train, H, W, C] uint8, levels in 0..num_levels-1; [0, H, W, C] when the
            training examples are streamed (`load_dataset(..., train_in_memory=False)`).
        validation: [N_val, H, W, C] uint8, disjoint from train (N_val may be 0).
        test: [N_test, H, W, C] uint8.
        num_levels: pixel levels: 256 for 8-bit data, 17 for digits, 2 for binary data.
        train_labels, validation_labels, test_labels: [N] int32 class labels, or None for
            data sets without labels (binarized_mnist).
        train_split: the TFDS split string that names exactly the training examples, e.g.
            "train[:55000]": what `stream_batches(name, split=...)` reads when train is
            streamed. None when no split string names them (digits, or an in-memory
            validation hold-out, which is a permutation).
        num_train: how many training examples there are; N_train when train is in memory.
            None in the constructor means len(train).
    """

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    num_levels: int
    train_labels: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    train_split: str | None = None
    num_train: int | None = None

    def __post_init__(self):
        if self.num_train is None:
            object.__setattr__(self, "num_train", len(self.train))
        streamed = len(self.train) == 0 and self.train_split is not None
        if self.num_train < 0 or not (self.num_train == len(self.train) or streamed):
            raise ValueError(f"num_train={self.num_train} with {len(self.train)} training "
                             "images in memory: they must agree unless train is empty and "
                             "train_split names the streamed examples")
        for split in ("train", "validation", "test"):
            images, labels = getattr(self, split), getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.shape[1:] != self.train.shape[1:]:
                raise ValueError(f"{split}: {images.dtype} {images.shape}, expected uint8 "
                                 f"[N, {', '.join(map(str, self.train.shape[1:]))}]")
            if labels is not None and labels.shape != images.shape[:1]:
                raise ValueError(f"{split}_labels: shape {labels.shape}, expected "
                                 f"{images.shape[:1]}")
        if self.train.ndim != 4 or not 2 <= self.num_levels <= 256:
            raise ValueError(f"expected [N, H, W, C] images and 2 <= num_levels <= 256, got "
                             f"{self.train.shape} and {self.num_levels}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.train.shape[1:])

    @property
    def scale(self) -> float:
        """1 / (num_levels - 1): maps levels 0..num_levels-1 to [0, 1]."""
        return 1.0 / (self.num_levels - 1)


def load_dataset(
    name: str = "digits",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    validation_size: int | float = 0.1,
    binarization: str = "none",
    seed: int = 0,
    train_in_memory: bool = True,
) -> ImageDataset:
    """Loads every split of an image data set into host memory as uint8 levels.

    With train_in_memory=False (for training sets over the memory budget), the training
    images are not read: `train` is [0, H, W, C] and `train_split` / `num_train` say which
    examples `stream_batches` should stream.

    Args:
        name: "digits", "sprites", "mnist", "fashion_mnist", "binarized_mnist", "cifar10", or
            the name of any TFDS data set with a fixed-shape uint8 "image" feature and train /
            test splits.
        data_dir: TFDS data directory; None: `$TFDS_DATA_DIR` if set, else TFDS's default.
            Unused for "digits" and "sprites".
        download: let TFDS download and prepare missing data (needs internet). When False,
            missing data raises `DatasetNotFoundError` without touching the network.
        validation_size: how much of the official train split to hold out for validation: an
            int count or a float fraction in [0, 1) (round(fraction * N) examples). In memory,
            the held-out examples are chosen by a permutation drawn from `seed`, and both
            parts keep the original order. With train_in_memory=False they are instead the
            last ones of the TFDS (or sprites') train split, `train[N - N_val:]`, so that
            the stream, `train[:N - N_val]`, excludes them (so the two modes validate on
            different examples).
            Ignored when the data set has an official validation split (binarized_mnist):
            that is used.
        binarization: "none" keeps the levels. "static" replaces every pixel once, on the
            host, by a Bernoulli draw with probability level * scale (the stochastic
            binarisation of Salakhutdinov & Murray (2008), with which Larochelle & Murray made
            the fixed binarized MNIST) from generators seeded by `seed`, so the binary data
            are the same in every run with that seed; num_levels becomes 2. "dynamic" keeps
            the levels (the training step calls `dynamic_binarize` on device); it is only
            validated here.
        seed: seeds the validation hold-out and the static binarisation.
        train_in_memory: False: leave the training images on disk, or for "sprites" unrendered
            (see above); their pixel levels are then not checked here. Not for "digits",
            which is always in memory, nor with binarization="static", which the stream does
            not apply.

    Returns:
        An `ImageDataset` of [N, H, W, C] uint8 arrays.

    Raises:
        ValueError: an unknown name, a TFDS data set without a usable "image" feature, a
            bad validation_size or binarization, or train_in_memory=False for "digits" or
            with binarization="static".
        DatasetNotFoundError: the data is not in the data directory and download=False.
    """
    if binarization not in BINARIZATIONS:
        raise ValueError(f"binarization must be one of {BINARIZATIONS}, got {binarization!r}")
    if not train_in_memory:
        if name == "digits":
            raise ValueError("'digits' is small and always in memory: train_in_memory=False "
                             "is only for TFDS data sets")
        if binarization == "static":
            raise ValueError("binarization='static' needs the training set in memory (the "
                             "stream does not binarise); use 'dynamic' when streaming")
        if name == "sprites":
            return _load_sprites_streamed(validation_size)
        return _load_streamed(name, data_dir=data_dir, download=download,
                              validation_size=validation_size)
    if name == "digits":
        splits = _load_digits()
        num_levels = BUILTIN_DATASETS["digits"].num_levels
    elif name == "sprites":
        splits = {split: _render_sprites(_sprites_rows(split)) for split in ("train", "test")}
        num_levels = BUILTIN_DATASETS["sprites"].num_levels
    else:
        builder = tfds_builder(name, data_dir=data_dir, download=download)
        _image_feature(name, builder)
        num_levels = BUILTIN_DATASETS[name].num_levels if name in BUILTIN_DATASETS else 256
        # Known for built-ins; for others, from the metadata of the prepared data set.
        has_validation = (name in BUILTIN_DATASETS and BUILTIN_DATASETS[name].official_validation
                          or "validation" in builder.info.splits)
        split_names = ("train", "test") + (("validation",) if has_validation else ())
        splits = {split: _read_split(name, builder, split) for split in split_names}
        _check_levels(name, splits, num_levels)

    if binarization == "static":
        # Before the hold-out, and one generator per split: an example's binary image does not
        # depend on validation_size.
        stream = {"train": 0, "validation": 1, "test": 2}
        splits = {split: (_bernoulli_levels(images, num_levels=num_levels,
                                            seed=(seed, stream[split])), labels)
                  for split, (images, labels) in splits.items()}
        num_levels = 2

    train_images, train_labels = splits["train"]
    # A TFDS split string names the training examples only when none were held out of them.
    train_split = None if name == "digits" else "train"
    if "validation" not in splits:
        train_idx, val_idx = _holdout(len(train_images), validation_size, seed=seed)
        splits["validation"] = _take(splits["train"], val_idx)
        train_images, train_labels = _take(splits["train"], train_idx)
        if len(val_idx):
            train_split = None
    return ImageDataset(
        name=name,
        train=train_images,
        validation=splits["validation"][0],
        test=splits["test"][0],
        num_levels=num_levels,
        train_labels=train_labels,
        validation_labels=splits["validation"][1],
        test_labels=splits["test"][1],
        train_split=train_split,
    )


def dataset_nbytes(
    name: str,
    *,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> int:
    """Bytes of host memory the images of a data set take as uint8: N * H * W * C.

    Read from metadata (no example is decoded; for digits, nothing is imported), so a training
    loop can choose between in-memory training and `stream_batches` against a memory budget
    before loading anything. Labels are not counted.

    Args:
        name: as in `load_dataset`.
        split: None: every split (for digits: all 1,797 images). Otherwise a TFDS split
            string, e.g. "train": the official train split, validation hold-out included
            (for digits: "train", its 1,500 non-test images, or "test"; for sprites: "train",
            its 727,280 non-test images, "test", or a slice of either).
        data_dir, download: as in `load_dataset`.

    Raises:
        DatasetNotFoundError: the data is not prepared and download=False (TFDS only knows
            the split sizes of a prepared data set).
    """
    if name == "digits":
        counts = {None: DIGITS_NUM_IMAGES, "train": DIGITS_NUM_IMAGES - DIGITS_TEST_SIZE,
                  "test": DIGITS_TEST_SIZE}
        if split not in counts:
            raise ValueError(f"digits has splits 'train' and 'test', got {split!r}")
        return counts[split] * 8 * 8 * 1
    if name == "sprites":
        num_images = SPRITES_NUM_IMAGES if split is None else len(_sprites_rows(split))
        return num_images * math.prod(ground_truth.Sprites.observation_shape)
    builder = tfds_builder(name, data_dir=data_dir, download=download)
    height, width, channels = _image_feature(name, builder).shape
    if not builder.is_prepared():
        raise _not_found(name, builder)
    if split is None:
        num_examples = builder.info.splits.total_num_examples
    else:
        num_examples = builder.info.splits[split].num_examples
    return num_examples * height * width * channels


def stream_batches(
    name: str,
    *,
    split: str,
    batch_size: int,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 10_000,
    repeat: bool = True,
    skip_batches: int = 0,
) -> Iterator[np.ndarray]:
    """Streams this process's batches of a TFDS image data set, for data over the budget.

    Each process reads its own contiguous sub-split (`tfds.split_for_jax_process` with
    drop_remainder=True, so every process has as many examples, hence batches, as the
    others), shuffles it through a `shuffle_buffer`-example buffer (reshuffled every epoch),
    repeats it if `repeat`, and batches it with drop_remainder=True. The order is a function
    of `seed`, so a resumed run skips the `skip_batches` batches it has already trained on.

    "sprites" is rendered on the host instead, without TensorFlow. Epoch e visits the rows of
    the split in the order of a permutation drawn from (seed, e) (in split order when
    shuffle_buffer=0), cut into global batches of batch_size * process_count rows (the last
    partial one dropped); process p renders rows p * batch_size .. (p + 1) * batch_size - 1 of
    each global batch. Batch n is a function of (seed, n) alone, so skipping costs nothing.

    Args:
        name: a TFDS image data set name, or "sprites" (not "digits", which is always held
            in memory).
        split: a TFDS split string, e.g. "train", "test", "train[:55000]"; pass the
            `train_split` of `load_dataset(name, train_in_memory=False)`, which excludes
            that data set's validation examples ("train" would include them). For sprites:
            "train" or "test", or a slice of one ("train[:717280]").
        batch_size: examples per batch on this process.
        data_dir, download: as in `load_dataset`; unused for sprites.
        seed: seeds the file and example shuffles.
        process_index, process_count: this process and how many share the data (pass
            `jax.process_index()`, `jax.process_count()`).
        shuffle_buffer: examples in the shuffle buffer; 0 reads in order (e.g. evaluation).
            For sprites any value above 0 shuffles the whole split.
        repeat: repeat forever; when False the iterator ends after one pass.
        skip_batches: batches to skip at the start (the step a resumed run starts from).

    Returns:
        An iterator of [batch_size, H, W, C] uint8 numpy arrays of levels. Static
        binarisation is not applied when streaming; dynamic binarisation happens on device.

    Raises:
        DatasetNotFoundError: the data is not prepared and download=False (raised by this
            call, not at the first batch).
        ValueError: digits; for sprites, a bad split or one smaller than a global batch.
    """
    if name == "digits":
        raise ValueError("'digits' is small and always in memory: use load_dataset('digits')")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if name == "sprites":
        return _stream_sprites(split, batch_size=batch_size, seed=seed,
                               process_index=process_index, process_count=process_count,
                               shuffle=shuffle_buffer > 0, repeat=repeat,
                               skip_batches=skip_batches)
    tf, tfds = _tf_and_tfds()
    builder = tfds_builder(name, data_dir=data_dir, download=download)
    _image_feature(name, builder)
    process_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=True
    )
    ds = _as_dataset(name, builder, split=process_split, shuffle_files=shuffle_buffer > 0,
                     read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
    ds = ds.map(lambda example: example["image"], num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True).skip(skip_batches)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_deterministic(tf)).as_numpy_iterator()


def dynamic_binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """A fresh binarisation of x: each pixel an independent draw b ~ Bernoulli(x).

    Dynamic binarisation (Salakhutdinov & Murray, 2008): redrawn every step, so E[b] = x and
    the model sees a new binary image of each example every time. Pure; works under jit and
    vmap (give each example its own key: `jax.vmap(dynamic_binarize)(keys_b, x_bhwc)`).

    Args:
        key: a JAX PRNG key.
        x: probabilities in [0, 1], any shape (e.g. [B, H, W, C]).

    Returns:
        float32 array of 0s and 1s with x's shape.
    """
    return fastpath.bernoulli(key, x).astype(jnp.float32)  # = jax.random.bernoulli


def uniform_dequantize(key: jax.Array, levels: jax.Array, num_levels: int) -> jax.Array:
    """A fresh uniform dequantisation of integer levels: y = (k + u) / L, u ~ U[0, 1) per pixel.

    Level k of L (k = 0 .. L-1) becomes a point drawn uniformly from its bin [k/L, (k+1)/L),
    redrawn every step. A density p on [0, 1]^D fitted to such y is a model of the discrete
    levels: bin k has volume L^-D, so P(k) = integral of p over the bin = E_u[p(y)] L^-D and,
    by Jensen's inequality (Theis et al. 2016, "A note on the evaluation of generative models",
    Sec. 3.1),

        log P(k) >= E_u[log p(y)] - D log L,
        bits/dim = -log2 P(k) / D <= -E_u[log p(y)] / (D ln 2) + log2 L.

    Training on y therefore maximises a lower bound on the log-probability of the 8-bit data
    (`losses.dequantized_log_mass_bound` applies it); training on the grid points k / (L - 1)
    lets the density grow without bound there instead. Pure; works under jit and vmap (give
    each example its own key: `jax.vmap(uniform_dequantize, (0, 0, None))(keys_b, k_bhwc, L)`).

    Args:
        key: a JAX PRNG key.
        levels: integer levels k in 0..num_levels-1, any shape (e.g. [H, W, C] uint8).
        num_levels: L, the number of levels (256 for 8-bit images).

    Returns:
        float32 array of levels' shape, every y in [k / L, (k + 1) / L) as computed in float32
        (rounding of k + u up to k + 1 is clipped back inside the bin).
    """
    k = levels.astype(jnp.float32)
    u = fastpath.uniform(key, k.shape)  # = jax.random.uniform
    below_next_bin = jnp.nextafter((k + 1.0) / num_levels, jnp.float32(0.0))
    return jnp.minimum((k + u) / num_levels, below_next_bin)


def validate_pixels(x: Any, *, low: float = 0.0, high: float = 1.0, name: str = "data") -> None:
    """Raises ValueError, naming the observed min and max, unless x is finite and in range.

    Eager: x must be a concrete array (numpy, or a jax.Array outside jit), not a tracer.
    """
    x = np.asarray(x)
    if x.size == 0:
        return
    num_bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    # nanmin / nanmax still see +-inf, which is what the message should report.
    lo, hi = (np.nan, np.nan) if np.isnan(x).all() else (np.nanmin(x), np.nanmax(x))
    if num_bad or lo < low or hi > high:
        raise ValueError(
            f"{name}: values must be finite and in [{low}, {high}], but min={lo}, max={hi}"
            + (f", {num_bad} non-finite" if num_bad else "")
            + f" (dtype {x.dtype}, shape {x.shape})"
        )


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def shard_for_process(array: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """The rows of `array` one process holds when the example axis is split across processes.

    The N rows are zero-padded at the end to `padded_size(N, process_count)` and cut into
    `process_count` contiguous blocks of R = ceil(N / process_count) rows; block
    `process_index` is returned. Every process gets R rows, as collectives need; block p holds
    clip(N - p * R, 0, R) real rows followed by zero rows, which evaluation must mask out.

    Args:
        array: [N, ...].
        process_index: this process, in [0, process_count).
        process_count: number of processes.

    Returns:
        [R, ...] array of array's dtype.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    rows = padded_size(len(array), process_count) // process_count
    block = array[process_index * rows : (process_index + 1) * rows]
    if len(block) == rows:
        return block
    padding = np.zeros((rows - len(block),) + array.shape[1:], array.dtype)
    return np.concatenate([block, padding])


def tfds_builder(name: str, *, data_dir: str | os.PathLike | None, download: bool):
    """The TFDS builder for name, prepared first if download; ValueError for unknown names.

    data_dir None: `$TFDS_DATA_DIR` if set, else TFDS's default. Imports TensorFlow and TFDS.
    """
    _, tfds = _tf_and_tfds()
    if data_dir is None:
        # Read here, at each call: TFDS reads $TFDS_DATA_DIR only once, when it is imported.
        data_dir = os.environ.get("TFDS_DATA_DIR") or None
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except tfds.core.DatasetNotFoundError as err:
        raise ValueError(
            f"Unknown data set {name!r}. Built-in names: {', '.join(BUILTIN_DATASETS)}. The "
            "name of any TFDS image data set (one with an 'image' feature; see "
            "tfds.list_builders()) also works."
        ) from err
    if download:
        builder.download_and_prepare()
    return builder


def read_tfds_features(name: str, builder, *, split: str, keys) -> dict[str, np.ndarray]:
    """Every example of a TFDS split, in the split's order, as {key: [N, ...] numpy array} of
    the named features (decoded: images as uint8, class labels as int64).

    Args:
        name: the data set's name, for error messages.
        builder: its `tfds_builder`.
        split: a TFDS split string ("train", "train+test", "train[:100]").
        keys: names of features of the data set.

    Raises:
        DatasetNotFoundError: the data is not prepared.
        ValueError: the split is empty.
    """
    tf, _ = _tf_and_tfds()
    keys = tuple(keys)
    ds = _as_dataset(name, builder, split=split)
    ds = ds.map(lambda example: {key: example[key] for key in keys},
                num_parallel_calls=tf.data.AUTOTUNE).batch(10_000)
    chunks = list(ds.with_options(_deterministic(tf)).as_numpy_iterator())
    if not chunks:
        raise ValueError(f"TFDS data set {name!r}: split {split!r} is empty")
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in keys}


# --------------------------------------------------------------------------- private helpers

_Split = tuple[np.ndarray, np.ndarray | None]  # ([N, H, W, C] uint8, [N] int32 or None)


def _load_digits() -> dict[str, _Split]:
    """sklearn digits as {"train": 1,500 examples, "test": the fixed 297}."""
    from sklearn import datasets  # Only here: digits runs need no other data library.

    digits = datasets.load_digits()
    full = (digits.images.astype(np.uint8)[..., None], digits.target.astype(np.int32))
    train_idx, test_idx = _holdout(len(digits.images), DIGITS_TEST_SIZE, seed=DIGITS_TEST_SEED)
    return {"train": _take(full, train_idx), "test": _take(full, test_idx)}


def _load_streamed(
    name: str, *, data_dir: str | os.PathLike | None, download: bool,
    validation_size: int | float,
) -> ImageDataset:
    """load_dataset(..., train_in_memory=False): validation and test read, train named only."""
    builder = tfds_builder(name, data_dir=data_dir, download=download)
    image_shape = _image_feature(name, builder).shape
    if not builder.is_prepared():  # The split sizes below come from a prepared data set.
        raise _not_found(name, builder)
    num_levels = BUILTIN_DATASETS[name].num_levels if name in BUILTIN_DATASETS else 256
    num_official_train = builder.info.splits["train"].num_examples
    splits = {"test": _read_split(name, builder, "test")}
    if "validation" in builder.info.splits:
        train_split, num_train = "train", num_official_train
        splits["validation"] = _read_split(name, builder, "validation")
    else:
        num_train = num_official_train - _holdout_count(num_official_train, validation_size)
        train_split = f"train[:{num_train}]"
        if num_train < num_official_train:
            splits["validation"] = _read_split(name, builder, f"train[{num_train}:]")
        else:
            labels = np.zeros(0, np.int32) if _has_labels(builder) else None
            splits["validation"] = np.zeros((0, *image_shape), np.uint8), labels
    _check_levels(name, splits, num_levels)
    return ImageDataset(
        name=name,
        train=np.zeros((0, *image_shape), np.uint8),
        validation=splits["validation"][0],
        test=splits["test"][0],
        num_levels=num_levels,
        train_labels=None if splits["test"][1] is None else np.zeros(0, np.int32),
        validation_labels=splits["validation"][1],
        test_labels=splits["test"][1],
        train_split=train_split,
        num_train=num_train,
    )


@functools.cache
def _sprites_splits() -> dict[str, np.ndarray]:
    """Indices into the sprites grid (row-major over the factors, dSprites' order) of the
    splits: "test", SPRITES_TEST_SIZE of them, sorted; "train", the rest, in a shuffled order
    whose tail `load_dataset` holds out for validation when streaming. Both drawn once with
    SPRITES_SPLIT_SEED."""
    order = np.random.default_rng(SPRITES_SPLIT_SEED).permutation(SPRITES_NUM_IMAGES)
    splits = {"train": order[SPRITES_TEST_SIZE:], "test": np.sort(order[:SPRITES_TEST_SIZE])}
    for rows in splits.values():
        rows.flags.writeable = False
    return splits


def _sprites_rows(split: str) -> np.ndarray:
    """The grid indices of a sprites split string: "train", "test", or a slice "train[a:b]"."""
    match = re.fullmatch(r"(train|test)(?:\[(\d*):(\d*)\])?", split)
    if match is None:
        raise ValueError(f"sprites has splits 'train' and 'test', or slices of them such as "
                         f"'train[:1000]', got {split!r}")
    name, start, stop = match.groups()
    return _sprites_splits()[name][int(start) if start else None:int(stop) if stop else None]


def _render_sprites(rows: np.ndarray) -> _Split:
    """([N, 64, 64, 1] uint8 images, [N] int32 shape labels) of sprites grid indices; rendered
    in chunks, so that a whole split needs no temporary copy."""
    factors = np.stack(np.unravel_index(rows, ground_truth.Sprites.factor_sizes), axis=1)
    images = np.empty((len(rows), *ground_truth.Sprites.observation_shape), np.uint8)
    sprites = ground_truth.Sprites()
    for start in range(0, len(rows), 8192):
        images[start:start + 8192] = sprites.images_from_factors(factors[start:start + 8192])
    return images, factors[:, 0].astype(np.int32)


def _load_sprites_streamed(validation_size: int | float) -> ImageDataset:
    """load_dataset("sprites", train_in_memory=False): test and the validation tail of "train"
    rendered, the rest of "train" named by its slice."""
    train_rows = _sprites_rows("train")
    num_train = len(train_rows) - _holdout_count(len(train_rows), validation_size)
    validation, validation_labels = _render_sprites(train_rows[num_train:])
    test, test_labels = _render_sprites(_sprites_rows("test"))
    return ImageDataset(
        name="sprites",
        train=np.zeros((0, *ground_truth.Sprites.observation_shape), np.uint8),
        validation=validation,
        test=test,
        num_levels=BUILTIN_DATASETS["sprites"].num_levels,
        train_labels=np.zeros(0, np.int32),
        validation_labels=validation_labels,
        test_labels=test_labels,
        train_split=f"train[:{num_train}]",
        num_train=num_train,
    )


# Mixed into the stream's seed, so that its generators differ from the other ones drawn from
# `seed` (the hold-out's default_rng(seed), the binarisation's (seed, 0..2)).
_SPRITES_STREAM_TAG = 7


def _stream_sprites(split: str, *, batch_size: int, seed: int, process_index: int,
                    process_count: int, shuffle: bool, repeat: bool,
                    skip_batches: int) -> Iterator[np.ndarray]:
    """stream_batches("sprites", ...): checks the arguments now, renders batches lazily."""
    rows = _sprites_rows(split)
    global_batch = batch_size * process_count
    if batch_size < 1 or len(rows) < global_batch:
        raise ValueError(f"sprites {split!r} has {len(rows)} images: not enough for a global "
                         f"batch of {batch_size} x {process_count} processes")
    batches_per_epoch = len(rows) // global_batch
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")

    def batches():
        epoch, order = None, rows
        indices = itertools.count(skip_batches) if repeat else range(skip_batches,
                                                                     batches_per_epoch)
        for index in indices:
            if shuffle and index // batches_per_epoch != epoch:
                epoch = index // batches_per_epoch
                rng = np.random.default_rng((seed, _SPRITES_STREAM_TAG, epoch))
                order = rows[rng.permutation(len(rows))]
            first = (index % batches_per_epoch) * global_batch + process_index * batch_size
            yield _render_sprites(order[first:first + batch_size])[0]

    return batches()


def _check_levels(name: str, splits: dict[str, _Split], num_levels: int) -> None:
    for split, (images, _) in splits.items():
        if images.size and images.max() >= num_levels:
            raise ValueError(f"{name} {split}: pixel level {images.max()} is not below "
                             f"num_levels={num_levels}")


def _take(split: _Split, idx: np.ndarray) -> _Split:
    images, labels = split
    return images[idx], None if labels is None else labels[idx]


def _holdout(n: int, size: int | float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices into range(n); the held-out ones drawn with seed."""
    count = _holdout_count(n, size)
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[count:]), np.sort(permutation[:count])


def _holdout_count(n: int, size: int | float) -> int:
    """How many of n examples validation_size=size holds out; ValueError when out of range."""
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise ValueError(f"validation_size must be an int count or a float fraction, got "
                         f"{size!r}")
    if isinstance(size, numbers.Integral):
        if not 0 <= size < n:
            raise ValueError(f"validation_size={size} must be in [0, {n}) for {n} examples")
        count = int(size)
    else:
        if not 0.0 <= size < 1.0:
            raise ValueError(f"validation_size={size} as a fraction must be in [0, 1)")
        count = round(size * n)
    return count


def _bernoulli_levels(images: np.ndarray, *, num_levels: int, seed: Any) -> np.ndarray:
    """uint8 {0, 1} draws with probability level / (num_levels - 1), from a seeded generator."""
    rng = np.random.default_rng(seed)
    probability = images.astype(np.float32) * np.float32(1.0 / (num_levels - 1))
    return (rng.random(images.shape, dtype=np.float32) < probability).astype(np.uint8)


@functools.cache
def _tf_and_tfds():
    """Imports TensorFlow, with GPUs hidden and C++ INFO logs off, and TFDS, once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        # Otherwise TF reserves most of every GPU's memory, which JAX needs.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF initialised its devices before this module imported it.
        pass
    return tf, tfds


def _deterministic(tf):
    options = tf.data.Options()
    options.deterministic = True
    return options


def _image_feature(name: str, builder):
    """The builder's "image" feature; ValueError unless it is a fixed-shape uint8 image."""
    _, tfds = _tf_and_tfds()
    features = builder.info.features
    image = features["image"] if "image" in features else None
    if not isinstance(image, tfds.features.Image):
        raise ValueError(f"TFDS data set {name!r} has no 'image' feature (its features: "
                         f"{', '.join(features)}); only image data sets can be loaded.")
    if image.np_dtype != np.uint8 or None in image.shape:
        raise ValueError(f"TFDS data set {name!r}: its 'image' feature is {image.np_dtype} of "
                         f"shape {image.shape}, but a fixed-shape uint8 image is needed.")
    return image


def _not_found(name: str, builder) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"TFDS data set {name!r} (version {builder.version}) is not in data_dir "
        f"{builder.data_dir_root} (looked for {builder.data_dir}), and download=False, so "
        "nothing was fetched. To provide it, either run once with download=True "
        "(--config.data.download=True) on a machine with internet access, or point data_dir "
        f"(or $TFDS_DATA_DIR) at a TFDS data directory that holds {name}/{builder.version}/ "
        f"(prepared elsewhere, e.g. with `tfds build {name}`, and copied)."
    )


def _as_dataset(name: str, builder, **kwargs):
    """builder.as_dataset(**kwargs), raising DatasetNotFoundError when the data is missing."""
    try:
        return builder.as_dataset(**kwargs)
    except AssertionError:
        # TFDS reports missing data with an AssertionError; any other one passes through.
        if builder.data_path.exists():
            raise
        raise _not_found(name, builder) from None


def _has_labels(builder) -> bool:
    _, tfds = _tf_and_tfds()
    features = builder.info.features
    return "label" in features and isinstance(features["label"], tfds.features.ClassLabel)


def _read_split(name: str, builder, split: str) -> _Split:
    """A whole TFDS split as ([N, H, W, C] uint8 images, [N] int32 labels or None)."""
    keys = ("image", "label") if _has_labels(builder) else ("image",)
    arrays = read_tfds_features(name, builder, split=split, keys=keys)
    labels = arrays["label"].astype(np.int32) if "label" in arrays else None
    return arrays["image"], labels
