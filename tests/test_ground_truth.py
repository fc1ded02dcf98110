"""Tests for vae_jax.ground_truth.

References are independent of the code under test: a float64 renderer written here from the
geometry the `Sprites` docstring states (pixel by pixel over the whole image, no patches), areas
and centroids integrated on a fine grid, exact symmetries of the shapes, disentanglement_lib's
own `randint` calls, and chi-square tests of uniformity. The TFDS data sets are read through
`tfds.testing.mock_data`, and every lookup is checked against the features read back from the
mocked split by TFDS itself.
"""

import numpy as np
import pytest
from scipy import stats

from vae_jax import ground_truth

SPRITES = ground_truth.Sprites()
SHAPES = ("square", "ellipse", "heart")
RADIUS_PX = 15.75  # stated in the docstring: the shapes' radius at scale 1, in pixels
GRID_STEP = 2e-3  # of the grid the heart is integrated on


def factors_of(shape=0, scale=5, orientation=0, x=15, y=15):
    return np.array([[shape, scale, orientation, x, y]])


def render(factors):
    """[N, 64, 64] images (the channel dropped)."""
    images = SPRITES.images_from_factors(np.asarray(factors))
    assert images.shape == (len(factors), 64, 64, 1) and images.dtype == np.uint8
    return images[..., 0]


# ------------------------------------------------------------ the stated geometry, in float64


def heart_margin(x, y):
    """>= 0 inside the heart (x^2 + y^2 - 1)^3 <= x^2 y^3."""
    return x * x * y**3 - (x * x + y * y - 1.0) ** 3


def margin(shape, u, v):
    """>= 0 inside the shape, in its own frame (unit disk, v up), as the docstring states."""
    if shape == 0:  # square, corners on the unit circle
        return 1.0 / np.sqrt(2.0) - np.maximum(np.abs(u), np.abs(v))
    if shape == 1:  # ellipse, semi-axes 1 (u) and 1/2 (v)
        return 1.0 - u * u - 4.0 * v * v
    radius, centroid_y = ground_truth.HEART_CIRCUMRADIUS, ground_truth.HEART_CENTROID_Y
    return heart_margin(radius * u, radius * v + centroid_y)


def reference_margin(shape, scale, orientation, x, y):
    """[64, 64] margins of the pixel centres: pixel (i, j) centred at (j + 1/2, i + 1/2), the
    shape's centre at 16.5 + 31 p, rotated counter-clockwise on the screen, radius 15.75 s."""
    centre_x = 16.5 + 31.0 * np.linspace(0.0, 1.0, 32)[x]
    centre_y = 16.5 + 31.0 * np.linspace(0.0, 1.0, 32)[y]
    theta = np.linspace(0.0, 2.0 * np.pi, 40)[orientation]
    size = RADIUS_PX * np.linspace(0.5, 1.0, 6)[scale]
    cols, rows = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
    right, up = cols - centre_x, centre_y - rows
    u = (np.cos(theta) * right + np.sin(theta) * up) / size
    v = (-np.sin(theta) * right + np.cos(theta) * up) / size
    return margin(shape, u, v)


@pytest.fixture(scope="module")
def heart_grid():
    """Points of the heart on a grid of step GRID_STEP (heart coordinates)."""
    x, y = np.meshgrid(np.arange(-1.5, 1.5, GRID_STEP), np.arange(-1.2, 1.6, GRID_STEP))
    inside = heart_margin(x, y) >= 0
    return x[inside], y[inside]


# ---------------------------------------------------------------------------- sprites


def test_protocol_attributes():
    assert SPRITES.factor_names == ("shape", "scale", "orientation", "position_x", "position_y")
    assert SPRITES.factor_sizes == SPRITES.factors_num_values == (3, 6, 40, 32, 32)
    assert SPRITES.num_factors == 5 and np.prod(SPRITES.factor_sizes) == 737_280
    assert SPRITES.observation_shape == (64, 64, 1) and SPRITES.num_levels == 2
    np.testing.assert_allclose(SPRITES.factor_values[1], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(SPRITES.factor_values[2][[0, -1]], [0.0, 2.0 * np.pi])
    np.testing.assert_allclose(np.diff(SPRITES.factor_values[3]), 1.0 / 31.0)


def test_heart_constants_are_its_centroid_and_circumradius(heart_grid):
    x, y = heart_grid
    assert ground_truth.HEART_CENTROID_Y == pytest.approx(y.mean(), abs=2e-3)
    farthest = np.sqrt(x**2 + (y - ground_truth.HEART_CENTROID_Y) ** 2).max()
    # The heart fits the unit disk of its own frame, and not by a wide margin.
    assert farthest - GRID_STEP <= ground_truth.HEART_CIRCUMRADIUS <= farthest + 0.01


def test_rendering_matches_the_stated_geometry_pixel_for_pixel():
    # Every (shape, scale, orientation) at the two extreme positions, where a shape that left
    # its patch or the frame would show, and random factors.
    grid = np.stack(np.meshgrid(range(3), range(6), range(40), indexing="ij"), -1).reshape(-1, 3)
    corners = [np.concatenate([grid, np.full((len(grid), 2), k)], axis=1) for k in (0, 31)]
    random = SPRITES.sample_factors(300, np.random.default_rng(0))
    factors = np.concatenate([*corners, random])
    images = render(factors)
    for factor, image in zip(factors, images):
        reference = reference_margin(*factor)
        differ = image != (reference >= 0)
        # Only a pixel centre on the boundary, to the last bits, may go either way.
        assert np.all(np.abs(reference[differ]) < 1e-9), factor


def test_ink_grows_with_scale_and_matches_the_area():
    # Areas in the shape's frame: square 2, ellipse pi/2, heart integrated on the grid.
    x, y = np.meshgrid(np.arange(-1.5, 1.5, GRID_STEP), np.arange(-1.2, 1.6, GRID_STEP))
    heart_area = np.count_nonzero(heart_margin(x, y) >= 0) * GRID_STEP**2
    heart_area /= ground_truth.HEART_CIRCUMRADIUS**2
    for shape, area in enumerate((2.0, np.pi / 2, heart_area)):
        factors = np.array([[shape, scale, orientation, 15, 15] for scale in range(6)
                            for orientation in range(40)])
        ink = render(factors).sum(axis=(1, 2), dtype=np.int64).reshape(6, 40)
        assert np.all(np.diff(ink, axis=0) > 0), SHAPES[shape]
        expected_px = area * (RADIUS_PX * np.linspace(0.5, 1.0, 6)) ** 2
        np.testing.assert_allclose(ink.mean(axis=1), expected_px, rtol=0.03)


@pytest.mark.parametrize("shape", range(3))
def test_centre_of_mass_follows_the_position(shape):
    # Square and ellipse are point-symmetric about their centre pixel: their ink's centre of
    # mass is the centre exactly. The heart's is its centroid up to pixelisation.
    tolerance = 1e-9 if shape < 2 else 0.5
    for axis in ("x", "y"):
        factors = np.array([[shape, 4, 7, k, 9] if axis == "x" else [shape, 4, 7, 9, k]
                            for k in range(32)])
        images = render(factors).astype(np.float64)
        coords = np.arange(64) + 0.5
        com_x = (images.sum(axis=1) * coords).sum(axis=1) / images.sum(axis=(1, 2))
        com_y = (images.sum(axis=2) * coords).sum(axis=1) / images.sum(axis=(1, 2))
        moving, fixed = (com_x, com_y) if axis == "x" else (com_y, com_x)
        assert np.all(np.diff(moving) > 0)
        np.testing.assert_allclose(moving, 16.5 + 31.0 * np.linspace(0, 1, 32), atol=tolerance)
        np.testing.assert_allclose(fixed, fixed[0], atol=1e-9)


def test_the_three_shapes_differ():
    rng = np.random.default_rng(1)
    for factor in SPRITES.sample_factors(50, rng):
        images = render(np.array([np.r_[shape, factor[1:]] for shape in range(3)]))
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert np.count_nonzero(images[a] != images[b]) > 0.1 * images[a].sum()


def test_first_and_last_orientation_render_alike():
    # Both are a full turn apart: 0 and 2 pi.
    for shape in range(3):
        for scale in range(6):
            first, last = render([[shape, scale, 0, 3, 28], [shape, scale, 39, 3, 28]])
            np.testing.assert_array_equal(first, last)


def crop(image, x, y):
    """The 33 x 33 window centred on the sprite's centre pixel (16 + y, 16 + x)."""
    return image[y:y + 33, x:x + 33]


def test_symmetries_of_the_shapes():
    orientations = np.arange(40)
    for scale in range(6):
        # The square turned a quarter about its centre pixel is the same square, at every
        # orientation (the orientation grid itself has no quarter turn: 39 / 4 steps).
        squares = render([[0, scale, o, 5, 20] for o in orientations])
        for image in squares:
            np.testing.assert_array_equal(np.rot90(crop(image, 5, 20)), crop(image, 5, 20))
        # The ellipse turned half-way round is the same ellipse.
        ellipses = render([[1, scale, o, 20, 5] for o in orientations])
        for image in ellipses:
            np.testing.assert_array_equal(np.rot90(crop(image, 20, 5), 2), crop(image, 20, 5))
        # The upright heart is its own mirror image.
        (heart,) = render([[2, scale, 0, 11, 11]])
        np.testing.assert_array_equal(np.fliplr(crop(heart, 11, 11)), crop(heart, 11, 11))


def test_orientation_turns_counter_clockwise_and_the_heart_stands_upright():
    def axis_covariance(image):
        rows, cols = np.nonzero(image)
        return np.cov(cols + 0.5, -(rows + 0.5))  # x right, y up

    flat, turned = render([[1, 5, 0, 15, 15], [1, 5, 5, 15, 15]])  # turned by 2 pi 5/39 = 46 deg
    cov = axis_covariance(flat)
    assert cov[0, 0] > 3 * cov[1, 1]  # the long axis lies along x at orientation 0
    assert axis_covariance(turned)[0, 1] > 0  # ... and points up and to the right at 46 deg
    (heart,) = render([[2, 5, 0, 15, 15]])
    rows, cols = np.nonzero(heart)
    centre_col = 16 + 15
    # The tip is the lowest point, on the axis; the cleft is a notch at the top of the axis.
    assert rows.max() in rows[cols == centre_col]
    assert rows[cols == centre_col].min() > rows.min()


def test_images_are_binary_and_deterministic():
    factors = SPRITES.sample_factors(64, np.random.default_rng(2))
    first = SPRITES.images_from_factors(factors)
    assert set(np.unique(first)) <= {0, 1}
    assert first.tobytes() == SPRITES.images_from_factors(factors.copy()).tobytes()
    np.testing.assert_array_equal(SPRITES.sample_observations_from_factors(factors, None), first)


@pytest.mark.parametrize("make_rng", [np.random.default_rng, np.random.RandomState])
def test_sample_factors_is_seeded_and_in_range(make_rng):
    first = SPRITES.sample_factors(1000, make_rng(5))
    np.testing.assert_array_equal(first, SPRITES.sample_factors(1000, make_rng(5)))
    assert first.shape == (1000, 5) and first.dtype == np.int64
    assert first.min() >= 0 and np.all(first.max(axis=0) < SPRITES.factor_sizes)
    assert not np.array_equal(first, SPRITES.sample_factors(1000, make_rng(6)))


def test_sample_factors_with_a_random_state_is_disentanglement_libs():
    # disentanglement_lib's SplitDiscreteStateSpace.sample_latent_factors: one randint call per
    # factor, in order.
    reference_rng = np.random.RandomState(3)
    reference = np.stack([reference_rng.randint(size, size=100) for size in (3, 6, 40, 32, 32)],
                         axis=1)
    np.testing.assert_array_equal(SPRITES.sample_factors(100, np.random.RandomState(3)),
                                  reference)


def test_sample_factors_is_uniform_over_each_factor():
    factors = SPRITES.sample_factors(64_000, np.random.default_rng(7))
    for column, size in zip(factors.T, SPRITES.factor_sizes):
        counts = np.bincount(column, minlength=size)
        assert stats.chisquare(counts).pvalue > 1e-4
    # The factors are drawn independently: shape and position_x are uncorrelated.
    assert abs(np.corrcoef(factors[:, 0], factors[:, 3])[0, 1]) < 0.02


def test_sample_pairs_factors_with_their_images():
    factors, images = SPRITES.sample(16, np.random.default_rng(4))
    np.testing.assert_array_equal(images, SPRITES.images_from_factors(factors))
    np.testing.assert_array_equal(factors, SPRITES.sample_factors(16, np.random.default_rng(4)))
    observations = SPRITES.sample_observations(16, np.random.default_rng(4))
    np.testing.assert_array_equal(observations, images)


@pytest.mark.parametrize("factors, message", [
    (np.zeros((2, 4), np.int64), r"\[N, 5\]"),
    (np.zeros(5, np.int64), r"\[N, 5\]"),
    (np.zeros((2, 5), np.float32), "integer"),
    ([[3, 0, 0, 0, 0]], r"factor 0 \(shape\) has 3 values"),
    ([[0, 0, 40, 0, 0]], r"factor 2 \(orientation\) has 40 values"),
    ([[0, 0, 0, 0, -1]], r"factor 4 \(position_y\).*got -1"),
])
def test_bad_factors_are_refused(factors, message):
    with pytest.raises(ValueError, match=message):
        SPRITES.images_from_factors(factors)


def test_bad_sampling_arguments_are_refused():
    with pytest.raises(ValueError, match="Generator or RandomState"):
        SPRITES.sample_factors(4, 0)
    for num in (-1, 2.0, True):
        with pytest.raises(ValueError, match="non-negative int"):
            SPRITES.sample_factors(num, np.random.default_rng(0))
    assert SPRITES.images_from_factors(np.zeros((0, 5), np.int64)).shape == (0, 64, 64, 1)


# --------------------------------------------------------------------- TFDS, mocked


@pytest.fixture(scope="module")
def tfds():
    import tensorflow_datasets

    return tensorflow_datasets


def read_back(tfds, name, data_dir, split, keys):
    """The mocked split's features, read by TFDS itself."""
    examples = list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir)))
    return {key: np.stack([example[key] for example in examples]) for key in keys}


@pytest.mark.parametrize("name, sizes, image_shape, num_levels", [
    ("dsprites", (3, 6, 40, 32, 32), (64, 64, 1), 2),
    ("shapes3d", (10, 10, 10, 8, 4, 15), (64, 64, 3), 256),
])
def test_mocked_tfds_lookup_returns_the_image_with_those_factors(tfds, tmp_path, name, sizes,
                                                                 image_shape, num_levels):
    spec = ground_truth.TFDS_GROUND_TRUTH[name]
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        data = ground_truth.TFDSGroundTruth(name, data_dir=tmp_path)
        features = read_back(tfds, name, tmp_path, "train", ("image", *spec.features))
    assert data.factor_sizes == data.factors_num_values == sizes
    assert data.observation_shape == image_shape and data.num_levels == num_levels
    assert data.factor_names[0] == spec.features[0].removeprefix("label_")
    factors = np.stack([features[key] for key in spec.features], axis=1)
    images = data.sample_observations_from_factors(factors, np.random.default_rng(0))
    assert images.shape == (40, *image_shape) and images.dtype == np.uint8
    for factor, image in zip(factors, images):
        first = np.flatnonzero((factors == factor).all(axis=1))[0]
        np.testing.assert_array_equal(image, features["image"][first])
    # Sampling draws the factors of the protocol; a combination the mock lacks is refused.
    assert data.sample_factors(10, np.random.default_rng(0)).shape == (10, len(sizes))
    absent = next(f for f in np.ndindex(*sizes) if not (factors == f).all(axis=1).any())
    with pytest.raises(ValueError, match="no image has the features"):
        data.sample_observations_from_factors([absent], np.random.default_rng(0))
    with pytest.raises(ValueError, match="integer"):
        data.sample_observations_from_factors(factors.astype(float), np.random.default_rng(0))


def test_mocked_smallnorb_draws_the_instance_like_disentanglement_lib(tfds, tmp_path):
    """Both TFDS splits are read; the instance is drawn by randint(10) per image and the image
    of (category, instance, elevation, azimuth, lighting) is returned."""
    import tensorflow as tf

    latent_combinations = [(1, 2, 3, 4), (4, 8, 17, 5)]  # category, elevation, azimuth, lighting
    rows = [(category, instance, elevation, azimuth, lighting)
            for category, elevation, azimuth, lighting in latent_combinations
            for instance in range(10)]
    requested_splits = []

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        requested_splits.append(split)
        images = np.zeros((len(rows), 96, 96, 1), np.uint8)
        images[:, 0, 0, 0] = np.arange(len(rows))  # pixel (0, 0) = the row
        columns = np.array(rows, np.int64).T
        return tf.data.Dataset.from_tensor_slices({
            "image": images, "image2": images, "label_category": columns[0],
            "instance": columns[1], "label_elevation": columns[2], "label_azimuth": columns[3],
            "label_lighting": columns[4]})

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_dataset_fn=as_dataset):
        data = ground_truth.TFDSGroundTruth("smallnorb", data_dir=tmp_path)
    assert requested_splits == ["train+test"]
    assert data.factor_names == ("category", "elevation", "azimuth", "lighting")
    assert data.factor_sizes == (5, 9, 18, 6) and data.observation_shape == (96, 96, 1)
    factors = np.array([latent_combinations[k] for k in (0, 1, 1, 0, 1, 0, 0, 1)])
    images = data.sample_observations_from_factors(factors, np.random.RandomState(11))
    instances = np.random.RandomState(11).randint(10, size=len(factors))
    expected_rows = [rows.index((f[0], i, *f[1:])) for f, i in zip(factors, instances)]
    np.testing.assert_array_equal(images[:, 0, 0, 0], expected_rows)


def test_unknown_tfds_ground_truth_name():
    with pytest.raises(ValueError, match="dsprites, shapes3d, smallnorb"):
        ground_truth.TFDSGroundTruth("mnist")
