"""Tests for vae_jax.input_pipeline.

References are independent of the code under test: sklearn's own copy of digits, the published
MNIST split sizes and label counts, plain numpy padding, Monte Carlo estimates with stated
tolerances, and Kolmogorov-Smirnov tests against the uniform distribution. TFDS data sets that
are not available offline are loaded through
`tfds.testing.mock_data`, the documented TFDS way (with split sizes and slicing made real by
`mock_sliced_tfds` where a test needs them); real MNIST comes from the shared data_dir (the
`mnist_data_dir` fixture skips when it is absent), and streamed MNIST is checked against
`tfds.load`. Sprites are checked against images rendered directly from their grid indices
(`ground_truth.Sprites`, itself tested against the stated geometry in test_ground_truth.py),
and their training path end to end against an uninterrupted run.
"""

import collections
import contextlib
import itertools
import json
import math
import pathlib
import shutil
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn import datasets as sklearn_datasets

from vae_jax import config_defaults, ground_truth, input_pipeline, train

# Published MNIST figures (LeCun et al.): images per class in the official train / test splits.
MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Mean pixel level (0..255) of the official MNIST splits, a checksum-like figure.
MNIST_TRAIN_MEAN, MNIST_TEST_MEAN = 33.3184, 33.7912


def row_keys(images):
    """One hashable key per example: its bytes."""
    return [row.tobytes() for row in images.reshape(len(images), -1)]


@pytest.fixture(scope="module")
def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


# ----------------------------------------------------------------------------------- digits


def test_digits_shapes_levels_and_split_sizes():
    data = input_pipeline.load_dataset("digits", validation_size=150)
    chex.assert_shape(data.train, (1350, 8, 8, 1))
    chex.assert_shape(data.validation, (150, 8, 8, 1))
    chex.assert_shape(data.test, (input_pipeline.DIGITS_TEST_SIZE, 8, 8, 1))
    assert len(data.train) + len(data.validation) + len(data.test) == 1797
    for images in (data.train, data.validation, data.test):
        assert images.dtype == np.uint8
    assert data.num_levels == 17 and data.scale == 1 / 16 and data.image_shape == (8, 8, 1)
    assert max(x.max() for x in (data.train, data.validation, data.test)) == 16
    assert data.train_labels.dtype == np.int32 and data.train_labels.shape == (1350,)


def test_digits_splits_partition_sklearns_copy():
    data = input_pipeline.load_dataset("digits", seed=3)
    reference = sklearn_datasets.load_digits()
    # sklearn's 1,797 digits are all distinct images, so the bytes identify an example.
    expected = collections.Counter(zip(row_keys(reference.images.astype(np.uint8)),
                                       reference.target.tolist()))
    got = collections.Counter()
    for split in ("train", "validation", "test"):
        got.update(zip(row_keys(getattr(data, split)), getattr(data, f"{split}_labels").tolist()))
    assert got == expected
    train, val, test = (set(row_keys(x)) for x in (data.train, data.validation, data.test))
    assert not (train & val or train & test or val & test)


def test_digits_deterministic_in_seed_with_a_fixed_test_split():
    a = input_pipeline.load_dataset("digits", seed=0)
    b = input_pipeline.load_dataset("digits", seed=0)
    c = input_pipeline.load_dataset("digits", seed=1)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.validation, b.validation)
    assert not np.array_equal(a.validation, c.validation)
    np.testing.assert_array_equal(a.test, c.test)  # the test split never depends on seed


@pytest.mark.parametrize("size, expected", [(0, 0), (300, 300), (0.2, 300)])
def test_validation_size_count_or_fraction(size, expected):
    data = input_pipeline.load_dataset("digits", validation_size=size)
    assert data.validation.shape == (expected, 8, 8, 1)
    assert len(data.train) == 1500 - expected


@pytest.mark.parametrize("size", [-1, 1500, 1.0, -0.1, "10", True])
def test_bad_validation_size(size):
    with pytest.raises(ValueError, match="validation_size"):
        input_pipeline.load_dataset("digits", validation_size=size)


def test_bad_binarization_name():
    with pytest.raises(ValueError, match="binarization"):
        input_pipeline.load_dataset("digits", binarization="threshold")


def test_digits_does_not_import_tensorflow():
    code = ("import sys; from vae_jax import input_pipeline as ip; ip.load_dataset('digits'); "
            "ip.dataset_nbytes('digits', split='train'); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_digits_nbytes_is_the_size_of_the_loaded_arrays():
    data = input_pipeline.load_dataset("digits")
    assert input_pipeline.dataset_nbytes("digits") == sum(
        x.nbytes for x in (data.train, data.validation, data.test))
    # "train" is everything but the fixed test split, validation hold-out included.
    assert input_pipeline.dataset_nbytes("digits", split="train") == (data.train.nbytes
                                                                      + data.validation.nbytes)
    assert input_pipeline.dataset_nbytes("digits", split="test") == data.test.nbytes
    with pytest.raises(ValueError, match="digits has splits"):
        input_pipeline.dataset_nbytes("digits", split="validation")


def test_digits_is_always_in_memory():
    data = input_pipeline.load_dataset("digits", validation_size=150)
    assert data.num_train == len(data.train) == 1350 and data.train_split is None
    with pytest.raises(ValueError, match="always in memory"):
        input_pipeline.load_dataset("digits", train_in_memory=False)


def test_image_dataset_checks_its_arrays():
    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        input_pipeline.ImageDataset("x", images.astype(np.float32), images, images, 17)
    with pytest.raises(ValueError, match="labels"):
        input_pipeline.ImageDataset("x", images, images, images, 17,
                                    train_labels=np.zeros(3, np.int32))
    assert input_pipeline.ImageDataset("x", images, images, images, 17).num_train == 4
    with pytest.raises(ValueError, match="num_train"):  # in memory: must be len(train)
        input_pipeline.ImageDataset("x", images, images, images, 17, num_train=9)
    with pytest.raises(ValueError, match="num_train"):  # streamed: needs train_split
        input_pipeline.ImageDataset("x", images[:0], images, images, 17, num_train=9)
    streamed = input_pipeline.ImageDataset("x", images[:0], images, images, 17,
                                           train_split="train[:9]", num_train=9)
    assert streamed.image_shape == (8, 8, 1)


# ----------------------------------------------------------------------------- binarisation


def test_static_binarization_is_fixed_bernoulli_of_intensity():
    gray = input_pipeline.load_dataset("digits", seed=5)
    binary = input_pipeline.load_dataset("digits", seed=5, binarization="static")
    again = input_pipeline.load_dataset("digits", seed=5, binarization="static")
    assert binary.num_levels == 2 and binary.scale == 1.0
    for split in ("train", "validation", "test"):
        b, g = getattr(binary, split), getattr(gray, split)
        assert b.dtype == np.uint8 and set(np.unique(b)) <= {0, 1}
        np.testing.assert_array_equal(b, getattr(again, split))
        assert (b[g == 0] == 0).all() and (b[g == 16] == 1).all()
        np.testing.assert_array_equal(getattr(binary, f"{split}_labels"),
                                      getattr(gray, f"{split}_labels"))
    # Monte Carlo: 86,400 independent pixels; the mean's std is <= 0.5 / sqrt(86,400) = 0.0017.
    assert abs(binary.train.mean() - gray.train.mean() / 16) < 0.01


def test_dynamic_binarization_leaves_levels_to_the_device():
    gray = input_pipeline.load_dataset("digits")
    flagged = input_pipeline.load_dataset("digits", binarization="dynamic")
    np.testing.assert_array_equal(flagged.train, gray.train)
    assert flagged.num_levels == 17


def test_dynamic_binarize_is_bernoulli_of_x():
    x = np.linspace(0.0, 1.0, 11, dtype=np.float32)  # [11] probabilities, both ends included
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.jit(jax.vmap(input_pipeline.dynamic_binarize, in_axes=(0, None)))(keys, x)
    chex.assert_shape(draws, (4000, 11))
    assert draws.dtype == jnp.float32 and set(np.unique(draws)) <= {0.0, 1.0}
    # Per pixel, the frequency over K=4000 draws has std sqrt(p (1 - p) / K) <= 0.0079; allow
    # five of them (0 and 1 are exact).
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=0.04)
    assert (draws[:, 0] == 0).all() and (draws[:, -1] == 1).all()


def test_dynamic_binarize_per_example_keys_under_jit_and_vmap():
    x_bhwc = np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32)
    keys_b = jax.random.split(jax.random.key(2), 3)
    batched = jax.jit(jax.vmap(input_pipeline.dynamic_binarize))(keys_b, x_bhwc)
    chex.assert_shape(batched, (3, 8, 8, 1))
    single = jax.jit(input_pipeline.dynamic_binarize)
    for i in range(3):  # each example's draw depends on its own key alone
        np.testing.assert_array_equal(batched[i], single(keys_b[i], x_bhwc[i]))
    assert not np.array_equal(batched[0], single(jax.random.key(3), x_bhwc[0]))


@pytest.mark.parametrize("num_levels", [256, 17])
def test_uniform_dequantize_is_uniform_over_each_bin(num_levels):
    levels = np.arange(num_levels, dtype=np.uint8)  # [L]: every level once
    num_draws = 4000
    keys = jax.random.split(jax.random.key(0), num_draws)
    draw = jax.jit(jax.vmap(input_pipeline.uniform_dequantize, in_axes=(0, None, None)),
                   static_argnums=2)
    y = np.asarray(draw(keys, levels, num_levels))  # [N, L]
    assert y.dtype == np.float32 and y.shape == (num_draws, num_levels)
    # Inside the bin [k/L, (k+1)/L), both ends as float32 computes them.
    k = levels.astype(np.float32)
    assert np.all(y >= k / np.float32(num_levels))
    assert np.all(y < (k + 1) / np.float32(num_levels))
    # Mean (k + 1/2) / L: the mean of N draws has std 1 / (L sqrt(12 N)); allow five of them.
    np.testing.assert_allclose(y.mean(axis=0, dtype=np.float64), (levels + 0.5) / num_levels,
                               rtol=0, atol=5 / (num_levels * math.sqrt(12 * num_draws)))
    # Uniform within the bin: L y - k ~ U[0, 1) (Kolmogorov-Smirnov over all N * L draws, and
    # in the top bin alone, where float32 rounding of k + u is largest).
    u = (y.astype(np.float64) * num_levels - levels).ravel()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(u.reshape(num_draws, num_levels)[:, -1], "uniform").pvalue > 1e-3


def test_uniform_dequantize_keeps_the_largest_u_inside_the_bin(monkeypatch):
    # k + u with u = 1 - 2^-24 rounds up to k + 1 in float32 for k >= 1; the result must stay
    # below the next bin (and below 1 in the top bin).
    largest_u = np.nextafter(np.float32(1.0), np.float32(0.0))
    monkeypatch.setattr(input_pipeline.fastpath, "uniform",
                        lambda key, shape: jnp.full(shape, largest_u, jnp.float32))
    levels = np.arange(256, dtype=np.uint8)
    y = np.asarray(input_pipeline.uniform_dequantize(jax.random.key(0), levels, 256))
    next_bin = (levels.astype(np.float32) + 1) / 256  # exact: 256 is a power of two
    assert np.all(y < next_bin) and y[-1] < 1.0
    # The clipped values are the largest float32 below the next bin's start.
    np.testing.assert_array_equal(y[1:], np.nextafter(next_bin[1:], np.float32(0.0)))


def test_uniform_dequantize_depends_only_on_the_key():
    levels_bhwc = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    keys_b = jax.random.split(jax.random.key(2), 3)
    batched = jax.jit(jax.vmap(input_pipeline.uniform_dequantize, in_axes=(0, 0, None)),
                      static_argnums=2)(keys_b, levels_bhwc, 256)
    chex.assert_shape(batched, (3, 8, 8, 1))
    for i in range(3):  # each example's draw depends on its own key alone
        single = input_pipeline.uniform_dequantize(keys_b[i], levels_bhwc[i], 256)
        np.testing.assert_array_equal(batched[i], single)
        np.testing.assert_array_equal(
            single, input_pipeline.uniform_dequantize(keys_b[i], levels_bhwc[i], 256))
    other = input_pipeline.uniform_dequantize(jax.random.key(3), levels_bhwc[0], 256)
    assert np.all(other != batched[0])  # a fresh u for every pixel


# ---------------------------------------------------------------------------- pixel checks


def test_validate_pixels_accepts_the_closed_range_and_nothing_past_it():
    # Both ends of [low, high] pass (the check returns None); the next float past either fails.
    for dtype in (np.float32, np.float64):
        assert input_pipeline.validate_pixels(np.array([0.0, 0.5, 1.0], dtype)) is None
        for outside in (np.nextafter(dtype(0), dtype(-1)), np.nextafter(dtype(1), dtype(2))):
            with pytest.raises(ValueError, match="values must be finite and in"):
                input_pipeline.validate_pixels(np.array([0.5, outside], dtype))
    assert input_pipeline.validate_pixels(jnp.array([0, 255]), high=255, name="levels") is None
    for outside in (-1, 256):
        with pytest.raises(ValueError, match=r"levels: .*\[0\.0, 255\]"):
            input_pipeline.validate_pixels(jnp.array([0, outside]), high=255, name="levels")
    assert input_pipeline.validate_pixels(np.array([-1.0, 1.0]), low=-1.0) is None
    with pytest.raises(ValueError, match="min=-1.5"):
        input_pipeline.validate_pixels(np.array([-1.5, 1.0]), low=-1.0)
    assert input_pipeline.validate_pixels(np.zeros((0, 3))) is None  # nothing to check


def test_validate_pixels_reports_min_and_max():
    with pytest.raises(ValueError, match=r"batch: .*min=-0\.5, max=1\.5"):
        input_pipeline.validate_pixels(np.array([-0.5, 0.2, 1.5]), name="batch")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_validate_pixels_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="1 non-finite"):
        input_pipeline.validate_pixels(np.array([0.0, bad, 1.0]))


# -------------------------------------------------------------------------------- sharding


def test_padded_size():
    assert [input_pipeline.padded_size(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 4, 4, 8, 8]


@pytest.mark.parametrize("n, count", [(10, 3), (12, 4), (2, 4), (7, 1)])
def test_shard_for_process_is_a_block_of_the_zero_padded_rows(n, count):
    array = np.arange(1, n * 2 + 1).reshape(n, 2)
    rows = -(-n // count)
    reference = np.pad(array, ((0, rows * count - n), (0, 0))).reshape(count, rows, 2)
    shards = [input_pipeline.shard_for_process(array, p, count) for p in range(count)]
    for p, shard in enumerate(shards):
        np.testing.assert_array_equal(shard, reference[p])
    np.testing.assert_array_equal(np.concatenate(shards)[:n], array)
    with pytest.raises(ValueError, match="process_index"):
        input_pipeline.shard_for_process(array, count, count)


# ------------------------------------------------------------------- names and missing data


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="digits, mnist, fashion_mnist, binarized_mnist, "
                       "cifar10.*any TFDS image data set"):
        input_pipeline.load_dataset("no_such_dataset")


def test_tfds_data_set_without_images_is_refused():
    with pytest.raises(ValueError, match="no 'image' feature"):
        input_pipeline.load_dataset("glue")


def test_missing_data_fails_fast_naming_the_directory(tmp_path):
    input_pipeline.dataset_nbytes("digits")  # nothing to import; the next call imports TFDS
    with pytest.raises(input_pipeline.DatasetNotFoundError):
        input_pipeline.load_dataset("mnist", data_dir=tmp_path)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as excinfo:
        input_pipeline.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert time.perf_counter() - start < 5.0  # no network attempt, no retries
    message = str(excinfo.value)
    assert str(tmp_path) in message and "download=True" in message
    assert "TFDS_DATA_DIR" in message
    with pytest.raises(input_pipeline.DatasetNotFoundError, match=str(tmp_path)):
        input_pipeline.dataset_nbytes("mnist", data_dir=tmp_path)
    with pytest.raises(input_pipeline.DatasetNotFoundError, match=str(tmp_path)):
        input_pipeline.stream_batches("mnist", split="train", batch_size=8, data_dir=tmp_path)
    with pytest.raises(input_pipeline.DatasetNotFoundError, match=str(tmp_path)):
        input_pipeline.load_dataset("mnist", data_dir=tmp_path, train_in_memory=False)


def test_static_binarization_cannot_be_streamed(tmp_path):
    with pytest.raises(ValueError, match="static.*in memory"):
        input_pipeline.load_dataset("mnist", data_dir=tmp_path, binarization="static",
                                    train_in_memory=False)


def test_tfds_data_dir_environment_variable_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(input_pipeline.DatasetNotFoundError, match=str(tmp_path)):
        input_pipeline.load_dataset("mnist")


# ---------------------------------------------------------------- mocked TFDS data sets


@pytest.mark.parametrize("name, image_shape", [("fashion_mnist", (28, 28, 1)),
                                               ("cifar10", (32, 32, 3))])
def test_mocked_8bit_data_sets(tfds, tmp_path, name, image_shape):
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        data = input_pipeline.load_dataset(name, data_dir=tmp_path, validation_size=2)
    # mock_data yields the same 12 examples for every split.
    assert data.train.shape == (10, *image_shape) and data.validation.shape == (2, *image_shape)
    assert data.test.shape == (12, *image_shape) and data.image_shape == image_shape
    assert data.train.dtype == np.uint8 and data.num_levels == 256
    assert data.test_labels.dtype == np.int32 and set(data.test_labels) <= set(range(10))
    # A permuted hold-out: no TFDS split string names the 10 training examples.
    assert data.num_train == 10 and data.train_split is None


def test_mocked_binarized_mnist_uses_its_official_splits(tfds, tmp_path):
    with tfds.testing.mock_data(num_examples=12, max_value=2,  # levels drawn from {0, 1}
                                policy=tfds.testing.MockPolicy.USE_CODE):
        data = input_pipeline.load_dataset("binarized_mnist", data_dir=tmp_path,
                                           validation_size=5)
    for images in (data.train, data.validation, data.test):
        assert images.shape == (12, 28, 28, 1) and images.dtype == np.uint8
        assert set(np.unique(images)) <= {0, 1}
    assert data.num_levels == 2 and data.train_labels is None
    assert data.train_split == "train" and data.num_train == 12


def test_mocked_data_with_too_many_levels_is_refused(tfds, tmp_path):
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match="num_levels=2"):
            input_pipeline.load_dataset("binarized_mnist", data_dir=tmp_path)


def test_mocked_static_binarization(tfds, tmp_path):
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        data = input_pipeline.load_dataset("fashion_mnist", data_dir=tmp_path,
                                           binarization="static", validation_size=2)
    assert data.num_levels == 2 and set(np.unique(data.train)) == {0, 1}


# ---------------------------------------------------- streamed training set, mocked TFDS

MOCK_SPLIT_SIZES = {"train": 16, "test": 4}


@contextlib.contextmanager
def mock_sliced_tfds(tfds, data_dir, name="fashion_mnist"):
    """`tfds.testing.mock_data` for `name`, but with split sizes and TFDS slicing honoured.

    The default mock yields the same examples for every split and slice, which cannot show a
    leak. Here the metadata written to data_dir gives the splits `MOCK_SPLIT_SIZES` examples,
    slices are resolved by TFDS's own `ReadInstruction`, and example i of a split has pixel
    (0, 0) = i and pixel (0, 1) = 1 + the split's position in MOCK_SPLIT_SIZES (see
    `mock_ids`). Yields a list to which every read appends the (split, i) it produced.
    """
    import tensorflow as tf

    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
        for split, n in MOCK_SPLIT_SIZES.items()]))
    pathlib.Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
    reads = []

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        ids = [(instruction.splitname, i)
               for instruction in tfds.core.ReadInstruction.from_spec(split).to_absolute(
                   self.info.splits)
               for i in range(self.info.splits[instruction.splitname].num_examples)[
                   instruction.from_:instruction.to]]
        reads.extend(ids)
        images = np.zeros((len(ids), *self.info.features["image"].shape), np.uint8)
        for row, (split_name, i) in enumerate(ids):
            images[row, 0, :2, 0] = i, 1 + list(MOCK_SPLIT_SIZES).index(split_name)
        labels = np.array([i % 10 for _, i in ids], np.int64)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir,
                                as_dataset_fn=as_dataset):
        yield reads


def mock_ids(images):
    """The (split, i) of each image written by `mock_sliced_tfds`."""
    names = list(MOCK_SPLIT_SIZES)
    return [(names[code - 1], int(i)) for i, code in images[:, 0, :2, 0]]


def test_mocked_streamed_train_is_named_not_read(tfds, tmp_path):
    with mock_sliced_tfds(tfds, tmp_path) as reads:
        data = input_pipeline.load_dataset("fashion_mnist", data_dir=tmp_path,
                                           validation_size=4, train_in_memory=False)
    chex.assert_shape(data.train, (0, 28, 28, 1))
    assert data.train.dtype == np.uint8 and data.image_shape == (28, 28, 1)
    assert data.num_train == 12 and data.train_split == "train[:12]"
    # Validation is the contiguous tail of the train split; nothing before it was read.
    assert mock_ids(data.validation) == [("train", i) for i in range(12, 16)]
    assert mock_ids(data.test) == [("test", i) for i in range(4)]
    assert sorted(set(reads)) == [("test", i) for i in range(4)] + [("train", i) for i in
                                                                    range(12, 16)]
    np.testing.assert_array_equal(data.validation_labels, [2, 3, 4, 5])  # i % 10
    assert data.train_labels.shape == (0,) and data.num_levels == 256


@pytest.mark.parametrize("size, num_train", [(0.25, 12), (0, 16)])
def test_mocked_streamed_validation_size_count_or_fraction(tfds, tmp_path, size, num_train):
    with mock_sliced_tfds(tfds, tmp_path):
        data = input_pipeline.load_dataset("fashion_mnist", data_dir=tmp_path,
                                           validation_size=size, train_in_memory=False)
        assert input_pipeline.dataset_nbytes("fashion_mnist", split="train",
                                             data_dir=tmp_path) == 16 * 28 * 28
    assert data.num_train == num_train and data.train_split == f"train[:{num_train}]"
    chex.assert_shape(data.validation, (16 - num_train, 28, 28, 1))
    assert data.validation_labels.shape == (16 - num_train,)


def test_mocked_stream_excludes_validation_and_shards_by_process(tfds, tmp_path):
    with mock_sliced_tfds(tfds, tmp_path):
        data = input_pipeline.load_dataset("fashion_mnist", data_dir=tmp_path,
                                           validation_size=4, train_in_memory=False)

        def stream(process_index, **kwargs):
            return input_pipeline.stream_batches(
                "fashion_mnist", split=data.train_split, batch_size=3, data_dir=tmp_path,
                process_index=process_index, process_count=2, **kwargs)

        in_order = [list(stream(p, shuffle_buffer=0, repeat=False)) for p in (0, 1)]
        shuffled = stream(1, seed=3)
        shuffled_batches = [next(shuffled) for _ in range(8)]  # four epochs of process 1
        resumed = next(stream(1, seed=3, skip_batches=5))
    # Each process: a contiguous half of train[:12], in two whole batches.
    assert [[mock_ids(batch) for batch in batches] for batches in in_order] == [
        [[("train", i) for i in range(j, j + 3)] for j in range(start, start + 6, 3)]
        for start in (0, 6)]
    for batch in shuffled_batches:
        assert {i for _, i in mock_ids(batch)} <= set(range(6, 12))
    np.testing.assert_array_equal(resumed, shuffled_batches[5])


# ------------------------------------------------------------------- sprites (embedded)


def render_rows(rows):
    """Sprites images of grid indices (row-major over the factors), rendered here directly."""
    factors = np.stack(np.unravel_index(rows, (3, 6, 40, 32, 32)), axis=1)
    return ground_truth.Sprites().images_from_factors(factors)


def sorted_rows(images):
    return sorted(row_keys(images))


def test_sprites_splits_partition_the_factor_grid():
    train, test = input_pipeline._sprites_rows("train"), input_pipeline._sprites_rows("test")
    assert len(test) == input_pipeline.SPRITES_TEST_SIZE == 10_000
    assert len(train) + len(test) == input_pipeline.SPRITES_NUM_IMAGES == 737_280
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(737_280))
    # "train" is in a shuffled order, so that its tail is a random hold-out.
    assert np.count_nonzero(np.diff(train) > 0) < 0.6 * len(train)
    np.testing.assert_array_equal(input_pipeline._sprites_rows("train[5:9]"), train[5:9])
    for bad in ("validation", "train[1]", "train[-5:]", "Train"):
        with pytest.raises(ValueError, match="sprites has splits"):
            input_pipeline.dataset_nbytes("sprites", split=bad)


def test_sprites_nbytes_sends_the_training_set_to_the_stream():
    nbytes = input_pipeline.dataset_nbytes
    assert nbytes("sprites") == 737_280 * 64 * 64
    assert nbytes("sprites", split="train") == 727_280 * 64 * 64
    assert nbytes("sprites", split="test") == 10_000 * 64 * 64
    assert nbytes("sprites", split="train") > config_defaults.default_config().data.max_device_bytes


def test_sprites_streamed_dataset_holds_out_the_tail_of_train():
    data = input_pipeline.load_dataset("sprites", validation_size=100, train_in_memory=False)
    chex.assert_shape(data.train, (0, 64, 64, 1))
    assert data.num_train == 727_180 and data.train_split == "train[:727180]"
    assert data.num_levels == 2 and data.scale == 1.0 and data.image_shape == (64, 64, 1)
    chex.assert_shape(data.validation, (100, 64, 64, 1))
    chex.assert_shape(data.test, (10_000, 64, 64, 1))
    for images in (data.validation, data.test):
        assert images.dtype == np.uint8 and set(np.unique(images)) == {0, 1}
    train_rows = input_pipeline._sprites_rows("train")
    np.testing.assert_array_equal(data.validation, render_rows(train_rows[727_180:]))
    np.testing.assert_array_equal(data.test, render_rows(input_pipeline._sprites_rows("test")))
    # Labels are the shape factor; every shape is present.
    np.testing.assert_array_equal(data.test_labels,
                                  input_pipeline._sprites_rows("test") // (6 * 40 * 32 * 32))
    assert set(data.test_labels) == {0, 1, 2} and data.train_labels.shape == (0,)
    # The splits do not depend on the data seed (the stream's order does).
    other = input_pipeline.load_dataset("sprites", validation_size=0.0001, seed=9,
                                        train_in_memory=False)
    assert other.num_train == 727_280 - 73
    np.testing.assert_array_equal(other.test, data.test)
    np.testing.assert_array_equal(other.validation, data.validation[-73:])


def test_sprites_in_memory_path(monkeypatch):
    # A budget above the 3 GB of sprites renders "train" whole; here a small stand-in grid.
    rows = {"train": np.arange(0, 737_280, 9_001)[:60], "test": np.array([5, 77, 123_456])}
    monkeypatch.setattr(input_pipeline, "_sprites_splits", lambda: rows)
    data = input_pipeline.load_dataset("sprites", validation_size=10, seed=3)
    assert data.num_train == 50 and data.train_split is None and data.num_levels == 2
    assert sorted_rows(np.concatenate([data.train, data.validation])) == sorted_rows(
        render_rows(rows["train"]))
    np.testing.assert_array_equal(data.test, render_rows(rows["test"]))
    np.testing.assert_array_equal(data.test_labels, [0, 0, 0])


def sprites_stream(**kwargs):
    arguments = {"split": "train[:64]", "batch_size": 8, "seed": 3, **kwargs}
    return input_pipeline.stream_batches("sprites", **arguments)


def test_sprites_stream_is_deterministic_and_resumes_at_any_batch():
    batches = list(itertools.islice(sprites_stream(), 20))  # 8 batches per epoch
    for batch in batches:
        chex.assert_shape(batch, (8, 64, 64, 1))
        assert batch.dtype == np.uint8 and set(np.unique(batch)) <= {0, 1}
    again = list(itertools.islice(sprites_stream(), 20))
    assert [b.tobytes() for b in batches] == [b.tobytes() for b in again]
    for skip in (1, 7, 8, 19):
        np.testing.assert_array_equal(next(sprites_stream(skip_batches=skip)), batches[skip])
    assert not np.array_equal(next(sprites_stream(seed=4)), batches[0])
    # Each epoch visits the 64 rows once, in a new order.
    in_order = np.concatenate(list(sprites_stream(shuffle_buffer=0, repeat=False)))
    np.testing.assert_array_equal(in_order, render_rows(input_pipeline._sprites_rows("train")[:64]))
    for epoch in (0, 1):
        visited = np.concatenate(batches[8 * epoch:8 * epoch + 8])
        assert sorted_rows(visited) == sorted_rows(in_order)
    assert not np.array_equal(np.concatenate(batches[:8]), np.concatenate(batches[8:16]))
    assert len(list(sprites_stream(repeat=False, skip_batches=6))) == 2


def test_sprites_stream_gives_each_process_its_half_of_the_global_batch():
    single = list(itertools.islice(sprites_stream(batch_size=8), 12))
    halves = [list(itertools.islice(sprites_stream(batch_size=4, process_index=p,
                                                   process_count=2), 12)) for p in (0, 1)]
    for n, batch in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([halves[0][n], halves[1][n]]), batch)
    np.testing.assert_array_equal(next(sprites_stream(batch_size=4, process_index=1,
                                                      process_count=2, skip_batches=9)),
                                  halves[1][9])


def test_sprites_stream_streams_the_validation_slice_like_load_dataset():
    data = input_pipeline.load_dataset("sprites", validation_size=16, train_in_memory=False)
    (batch,) = input_pipeline.stream_batches("sprites", split=f"train[{data.num_train}:]",
                                             batch_size=16, shuffle_buffer=0, repeat=False)
    np.testing.assert_array_equal(batch, data.validation)


def test_sprites_stream_refuses_bad_arguments():
    with pytest.raises(ValueError, match="not enough for a global batch of 8 x 9"):
        sprites_stream(process_count=9, process_index=0)
    with pytest.raises(ValueError, match="sprites has splits"):
        sprites_stream(split="validation")
    with pytest.raises(ValueError, match="skip_batches"):
        sprites_stream(skip_batches=-1)
    with pytest.raises(ValueError, match="binarization='static'"):
        input_pipeline.load_dataset("sprites", binarization="static", train_in_memory=False)


def test_sprites_never_imports_tensorflow():
    code = ("import sys; from vae_jax import input_pipeline as ip; "
            "ip.load_dataset('sprites', validation_size=8, train_in_memory=False); "
            "next(ip.stream_batches('sprites', split='train', batch_size=4)); "
            "ip.dataset_nbytes('sprites', split='train'); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def tiny_sprites_config():
    """A conv VAE on sprites small enough for a few steps on a 2-core machine."""
    config = config_defaults.default_config()
    config.data.name = "sprites"
    config.data.binarization = "none"  # the images are binary already
    config.data.validation_size = 16
    config.model.encoder = config.model.decoder = "conv"
    config.model.features = (4, 8)
    config.model.latent_dim = 2
    run = config.run
    run.batch_size, run.eval_batch_size = 8, 16
    run.num_steps, run.steps_per_dispatch = 4, 1
    run.log_every = run.checkpoint_every = 2
    run.eval_every = 4
    run.num_image_examples = 4
    return config


@pytest.mark.slow
def test_sprites_train_through_the_stream_and_resume_on_the_same_batches(tmp_path, monkeypatch):
    streams = []  # the arguments of every stream the training loop opens

    def recording_stream(name, **kwargs):
        streams.append((name, kwargs["split"], kwargs["skip_batches"]))
        return stream_batches(name, **kwargs)

    stream_batches = input_pipeline.stream_batches
    monkeypatch.setattr(input_pipeline, "stream_batches", recording_stream)
    config = tiny_sprites_config()
    devices = jax.devices()[:2]
    first = train.train_and_evaluate(config, tmp_path, quiet=True, devices=devices)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert (tmp_path / "eval_metrics.jsonl").exists()
    assert (tmp_path / "final_metrics.json").exists()
    # Resumed from step 2, the stream skips the two batches trained on and feeds steps 3 and
    # 4 the batches the uninterrupted run saw: the parameters come out the same.
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    resumed = train.train_and_evaluate(config, tmp_path, quiet=True, devices=devices)
    assert int(resumed.state.step) == 4
    assert streams == [("sprites", "train[:727264]", 0), ("sprites", "train[:727264]", 2)]
    for a, b in zip(jax.tree.leaves(jax.device_get(first.state.params)),
                    jax.tree.leaves(jax.device_get(resumed.state.params))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def mnist(mnist_data_dir):
    """Real MNIST, 10,000 examples held out of the official train split for validation."""
    return input_pipeline.load_dataset("mnist", data_dir=mnist_data_dir, validation_size=10_000)


def test_real_mnist_splits_and_published_figures(mnist):
    assert mnist.train.shape == (50_000, 28, 28, 1)
    assert mnist.validation.shape == (10_000, 28, 28, 1)
    assert mnist.test.shape == (10_000, 28, 28, 1)
    assert mnist.train.dtype == np.uint8 and mnist.num_levels == 256
    assert mnist.train.min() == 0 and mnist.train.max() == 255
    official_train = np.concatenate([mnist.train, mnist.validation])
    official_labels = np.concatenate([mnist.train_labels, mnist.validation_labels])
    # The 60,000 official train images are all distinct, so train and validation are disjoint
    # exactly when together they hold 60,000 distinct images; the published class counts and
    # mean level then say that these are the official ones.
    assert len(set(row_keys(official_train))) == 60_000
    assert np.bincount(official_labels).tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert np.bincount(mnist.test_labels).tolist() == MNIST_TEST_LABEL_COUNTS
    assert abs(official_train.mean(dtype=np.float64) - MNIST_TRAIN_MEAN) < 1e-3
    assert abs(mnist.test.mean(dtype=np.float64) - MNIST_TEST_MEAN) < 1e-3


def test_real_mnist_nbytes_from_metadata(mnist_data_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", mnist_data_dir)
    assert input_pipeline.dataset_nbytes("mnist") == 70_000 * 28 * 28
    assert input_pipeline.dataset_nbytes("mnist", split="train") == 60_000 * 28 * 28


@pytest.fixture(scope="module")
def mnist_streamed(mnist_data_dir):
    """Real MNIST for streaming: the last 5,000 of the official train split held out."""
    return input_pipeline.load_dataset("mnist", data_dir=mnist_data_dir, validation_size=5000,
                                       train_in_memory=False)


def test_real_mnist_streamed_holds_out_the_tail_of_train(mnist_streamed, mnist, mnist_data_dir,
                                                         tfds):
    data = mnist_streamed
    chex.assert_shape(data.train, (0, 28, 28, 1))
    assert data.num_train == 55_000 and data.train_split == "train[:55000]"
    chex.assert_shape(data.validation, (5000, 28, 28, 1))
    # Independent path: TFDS's own loader and slicing.
    tail = tfds.as_numpy(tfds.load("mnist", split="train[55000:]", data_dir=mnist_data_dir,
                                   batch_size=-1))
    np.testing.assert_array_equal(data.validation, tail["image"])
    np.testing.assert_array_equal(data.validation_labels, tail["label"])
    np.testing.assert_array_equal(data.test, mnist.test)
    assert data.validation.dtype == np.uint8 and data.num_levels == 256


def test_real_mnist_stream_never_yields_a_validation_image(mnist_streamed, mnist,
                                                           mnist_data_dir):
    data = mnist_streamed
    validation = set(row_keys(data.validation))

    def one_epoch(process_index):
        # 55,000 / 2 processes / 500 = 55 batches: one shuffled epoch of this process's half.
        it = input_pipeline.stream_batches(
            "mnist", split=data.train_split, batch_size=500, data_dir=mnist_data_dir, seed=1,
            process_index=process_index, process_count=2)
        keys = [key for _ in range(55) for key in row_keys(next(it))]
        assert len(set(keys)) == len(keys) == 27_500  # each example once in an epoch
        return set(keys)

    first, second = one_epoch(0), one_epoch(1)
    assert not first & second
    assert not (first | second) & validation
    # Together with validation, the stream covers the 60,000 official train images.
    official_train = set(row_keys(mnist.train)) | set(row_keys(mnist.validation))
    assert first | second | validation == official_train


def test_stream_batches_gives_each_process_its_own_block(mnist, mnist_data_dir):
    def one_pass(process_index):
        batches = list(input_pipeline.stream_batches(
            "mnist", split="train[:4000]", batch_size=500, data_dir=mnist_data_dir,
            process_index=process_index, process_count=2, shuffle_buffer=0, repeat=False))
        assert len(batches) == 4
        for batch in batches:
            chex.assert_shape(batch, (500, 28, 28, 1))
            assert batch.dtype == np.uint8
        return set(row_keys(np.concatenate(batches)))

    first, second = one_pass(0), one_pass(1)
    assert len(first) == len(second) == 2000 and not first & second
    assert first | second <= set(row_keys(mnist.train)) | set(row_keys(mnist.validation))


def test_stream_batches_shuffles_repeats_and_resumes(mnist_data_dir):
    def stream(seed, *, shuffle_buffer=1000, skip_batches=0):
        return input_pipeline.stream_batches(
            "mnist", split="train[:4000]", batch_size=500, data_dir=mnist_data_dir, seed=seed,
            process_index=1, process_count=2, shuffle_buffer=shuffle_buffer,
            skip_batches=skip_batches)

    in_order = [next(it) for it in [stream(0, shuffle_buffer=0)] for _ in range(4)]
    shard = set(row_keys(np.concatenate(in_order)))
    it = stream(seed=7)
    batches = [next(it) for _ in range(6)]  # 4 batches per epoch: crosses into the second
    assert all(set(row_keys(batch)) <= shard for batch in batches)
    assert set(row_keys(np.concatenate(batches[:4]))) == shard  # one epoch: each example once
    assert not np.array_equal(batches[0], in_order[0])
    assert not np.array_equal(batches[0], next(stream(seed=8)))
    np.testing.assert_array_equal(next(stream(seed=7, skip_batches=5)), batches[5])
