"""Image data sets with known factors of variation, for training and scoring disentanglement.

The protocol is disentanglement_lib's `GroundTruthData` (Locatello et al. 2019, "Challenging
Common Assumptions in the Unsupervised Learning of Disentangled Representations";
google-research/disentanglement_lib, `data/ground_truth/ground_truth_data.py`): a data set is a
two-step generative model, factors y with each factor uniform over its values and independent
of the others, then an observation x ~ p(x | y)::

    factor_sizes (= factors_num_values), num_factors, observation_shape
    sample_factors(num, random_state)                       -> [N, F] int64 factor indices
    sample_observations_from_factors(factors, random_state) -> [N, H, W, C] uint8 images
    sample(num, random_state)                               -> (factors, images)
    sample_observations(num, random_state)                  -> images

Factors are indices into each factor's values (0 .. factor_sizes[f] - 1), as in
disentanglement_lib. `random_state` is a numpy `Generator` or a legacy `RandomState` (what
disentanglement_lib passes); with a `RandomState`, `sample_factors` makes the same calls in the
same order as disentanglement_lib's `SplitDiscreteStateSpace`, so it draws the same factors.
Images are uint8 levels 0 .. num_levels - 1 as the data set stores them (disentanglement_lib
returns float32 in [0, 1]: multiply by 1 / (num_levels - 1) to match).

Data sets:

* `Sprites`: a procedural dSprites, embedded (no download, no TensorFlow), with dSprites'
  factors (3 shapes x 6 scales x 40 orientations x 32 x 32 positions = 737,280 binary 64 x 64
  images), rendered on demand. `input_pipeline` trains on it by the name "sprites".
* `TFDSGroundTruth("dsprites" | "shapes3d" | "smallnorb")`: the TFDS copies of DeepMind's
  dSprites, DeepMind's 3D Shapes and NYU's small NORB, for users who have the data; TFDS and
  TensorFlow are imported only when one is built.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

Rng = np.random.Generator | np.random.RandomState


class GroundTruthData:
    """disentanglement_lib's ground-truth protocol; subclasses set the attributes below and
    implement `sample_observations_from_factors`.

    Attributes:
        factor_names: F names, in factor order.
        factor_sizes: F counts of values (disentanglement_lib's `factors_num_values`).
        observation_shape: (H, W, C) of one image.
        num_levels: pixel levels of the uint8 images (2 for binary images, 256 for 8-bit).
    """

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]
    observation_shape: tuple[int, int, int]
    num_levels: int

    @property
    def num_factors(self) -> int:
        """F."""
        return len(self.factor_sizes)

    @property
    def factors_num_values(self) -> tuple[int, ...]:
        """`factor_sizes`, by disentanglement_lib's name."""
        return self.factor_sizes

    def sample_factors(self, num: int, random_state: Rng) -> np.ndarray:
        """[num, F] int64: factor f uniform on 0 .. factor_sizes[f] - 1, factors independent.

        Drawn factor by factor, `num` at a time (`randint` for a RandomState, `integers` for a
        Generator), in disentanglement_lib's order.
        """
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
            raise ValueError(f"num must be a non-negative int, got {num!r}")
        columns = [_integers(random_state, size, int(num)) for size in self.factor_sizes]
        return np.stack(columns, axis=1).astype(np.int64)

    def sample_observations_from_factors(self, factors: np.ndarray,
                                         random_state: Rng) -> np.ndarray:
        """[N, H, W, C] uint8 images of the [N, F] integer factors."""
        raise NotImplementedError

    def sample(self, num: int, random_state: Rng) -> tuple[np.ndarray, np.ndarray]:
        """(factors [num, F] int64, images [num, H, W, C] uint8), factors drawn first."""
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num: int, random_state: Rng) -> np.ndarray:
        """[num, H, W, C] uint8 images of freshly drawn factors."""
        return self.sample(num, random_state)[1]

    def check_factors(self, factors) -> np.ndarray:
        """factors as an int64 [N, F] array; ValueError unless they are integers of that shape
        with every index in 0 .. factor_sizes[f] - 1."""
        factors = np.asarray(factors)
        num_factors = len(self.factor_sizes)
        if factors.ndim != 2 or factors.shape[1] != num_factors:
            raise ValueError(f"factors must be [N, {num_factors}] (one column per factor: "
                             f"{', '.join(self.factor_names)}), got shape {factors.shape}")
        if not np.issubdtype(factors.dtype, np.integer):
            raise ValueError(f"factors must be integer indices, got dtype {factors.dtype}")
        factors = factors.astype(np.int64)
        for f, (name, size) in enumerate(zip(self.factor_names, self.factor_sizes)):
            column = factors[:, f]
            if column.size and (column.min() < 0 or column.max() >= size):
                bad = column[(column < 0) | (column >= size)][0]
                raise ValueError(f"factor {f} ({name}) has {size} values, indices 0..{size - 1}, "
                                 f"got {bad}")
        return factors


def _integers(random_state: Rng, high: int, size: int) -> np.ndarray:
    """`size` int64 uniform on [0, high): disentanglement_lib's `random_state.randint(high,
    size=size)` for a RandomState, `integers` for a Generator."""
    if isinstance(random_state, np.random.RandomState):
        return random_state.randint(high, size=size).astype(np.int64)
    if isinstance(random_state, np.random.Generator):
        return random_state.integers(high, size=size, dtype=np.int64)
    raise ValueError(f"random_state must be a numpy Generator or RandomState, got "
                     f"{type(random_state).__name__}")


# --------------------------------------------------------------------------- sprites

SPRITE_SHAPES = ("square", "ellipse", "heart")
SPRITE_SCALES = np.linspace(0.5, 1.0, 6)
SPRITE_ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40)
SPRITE_POSITIONS = np.linspace(0.0, 1.0, 32)
for _values in (SPRITE_SCALES, SPRITE_ORIENTATIONS, SPRITE_POSITIONS):
    _values.flags.writeable = False
del _values

IMAGE_SIZE = 64
# At scale 1 every shape lies within SPRITE_RADIUS pixels of its centre. Not a whole number of
# pixels, so that at orientation 0 no pixel centre lies exactly on a boundary, where the last
# bit of the arithmetic would decide the pixel.
SPRITE_RADIUS = 15.75
# The centre of a sprite at position index k sits on the centre of pixel PATCH_RADIUS + k, and
# its pixels lie within PATCH_RADIUS of that pixel: the (2 PATCH_RADIUS + 1)^2 patch around it
# stays inside the image for every k in 0..31 (16 + 31 + 16 = 63).
PATCH_RADIUS = 16
SQUARE_HALF_SIDE = 1.0 / np.sqrt(2.0)  # corners on the unit circle
ELLIPSE_AXIS_RATIO = 0.5  # semi-axes 1 (along the shape's u axis) and 0.5
# The heart (x^2 + y^2 - 1)^3 <= x^2 y^3 (area 3.662) has its centroid at (0, 0.29348), and
# its farthest point from there is the tip (0, -1) (tests/test_ground_truth.py integrates
# both on a grid): (x, y) = HEART_CIRCUMRADIUS (u, v) + (0, HEART_CENTROID_Y) puts it in the
# unit disk, tip on the circle.
HEART_CENTROID_Y = 0.2935
HEART_CIRCUMRADIUS = 1.0 + HEART_CENTROID_Y


def sprite_inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v) of a shape's own frame (unit disk, v up) lie in the shape.

    square: max(|u|, |v|) <= 1 / sqrt(2). ellipse: u^2 + (v / 0.5)^2 <= 1. heart:
    (x^2 + y^2 - 1)^3 <= x^2 y^3 with (x, y) = HEART_CIRCUMRADIUS (u, v) + (0, HEART_CENTROID_Y),
    lobes up, tip down. Each shape lies in the unit disk, centred on its centroid.
    """
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE
    if shape == 1:
        return u * u + (v / ELLIPSE_AXIS_RATIO) ** 2 <= 1.0
    if shape == 2:
        x = HEART_CIRCUMRADIUS * u
        y = HEART_CIRCUMRADIUS * v + HEART_CENTROID_Y
        return (x * x + y * y - 1.0) ** 3 <= x * x * y**3
    raise ValueError(f"shape index must be 0, 1 or 2 ({', '.join(SPRITE_SHAPES)}), got {shape}")


class Sprites(GroundTruthData):
    """A procedural dSprites: binary 64 x 64 images of one white shape on black.

    Factors, as in DeepMind's dSprites (Matthey et al. 2017, github.com/deepmind/dsprites-dataset):

        shape        3   square, ellipse, heart
        scale        6   linearly in [0.5, 1]
        orientation  40  linearly in [0, 2 pi], both ends included (so indices 0 and 39 render
                         alike), counter-clockwise on the screen
        position_x   32  linearly in [0, 1], left to right
        position_y   32  linearly in [0, 1], top to bottom

    737,280 combinations; `factor_values` holds the values. `images_from_factors` renders any
    of them on demand; the whole set (3 GB) is never stored.

    Geometry, in pixels, with pixel (row i, column j) centred at (j + 1/2, i + 1/2) from the
    image's top-left corner. The shape's centre, at position indices (k_x, k_y) and values
    p = k / 31, is the centre of pixel (16 + k_y, 16 + k_x), i.e. at 16.5 + 31 p: it moves by
    exactly one pixel per position step. A pixel is white when its centre, mapped to the
    shape's own frame (translated by minus the centre, rotated by minus the orientation, divided
    by 15.75 * scale; v up), passes the shape's inside test (`sprite_inside`): the square has
    its corners, the ellipse (semi-axes 1 and 1/2, the long one along the shape's u axis) its
    ends and the heart (the implicit curve (x^2 + y^2 - 1)^3 = x^2 y^3, lobes up, centred on its
    centroid) its farthest points on the unit circle. So at scale 1 every shape lies within
    15.75 pixels of its centre; the 16-pixel margin keeps every shape wholly inside the frame
    at every position (the last centre pixel is 47, and 47 + 16 = 63).

    How this differs from DeepMind's dSprites: their images were drawn by a renderer whose
    heart outline and position-to-pixel map are not published, so ours are stated instead;
    the shape sizes differ, no pixel is ever cut by the frame, and images are not equal to
    theirs pixel for pixel. The factors, their values and their order are theirs.

    Rendering: since a position step is one whole pixel, the image of (shape, scale,
    orientation) at any position is its image at position (0, 0) shifted by (k_y, k_x)
    pixels. The 720 such 33 x 33 patches (0.8 MB) are rendered once per process and images
    are assembled from them: deterministic, and cheap enough to render training batches on the
    host every step.
    """

    factor_names = ("shape", "scale", "orientation", "position_x", "position_y")
    factor_sizes = (3, 6, 40, 32, 32)
    factor_values = (np.arange(3), SPRITE_SCALES, SPRITE_ORIENTATIONS, SPRITE_POSITIONS,
                     SPRITE_POSITIONS)
    observation_shape = (IMAGE_SIZE, IMAGE_SIZE, 1)
    num_levels = 2

    def images_from_factors(self, factors) -> np.ndarray:
        """[N, 64, 64, 1] uint8 images in {0, 1} of the [N, 5] integer factor indices.

        Raises:
            ValueError: factors not integers of shape [N, 5], or an index out of range.
        """
        factors = self.check_factors(factors)
        shape, scale, orientation, position_x, position_y = factors.T
        patches = _sprite_patches()[shape, scale, orientation]  # [N, 33, 33]
        images = np.zeros((len(factors), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        span = np.arange(2 * PATCH_RADIUS + 1)
        rows = position_y[:, None, None] + span[None, :, None]  # patch row r -> image row
        cols = position_x[:, None, None] + span[None, None, :]
        images[np.arange(len(factors))[:, None, None], rows, cols] = patches
        return images[..., None]

    def sample_observations_from_factors(self, factors, random_state: Rng) -> np.ndarray:
        """`images_from_factors(factors)`; random_state is unused (the images are
        deterministic), as for disentanglement_lib's dSprites."""
        del random_state
        return self.images_from_factors(factors)


@functools.cache
def _sprite_patches() -> np.ndarray:
    """[3, 6, 40, 33, 33] uint8: every (shape, scale, orientation) rendered with its centre on
    the centre pixel (16, 16) of a 33 x 33 patch; computed once, in float64."""
    offsets = np.arange(-PATCH_RADIUS, PATCH_RADIUS + 1, dtype=np.float64)
    dx = offsets[None, None, :]  # columns: rightwards from the centre
    dy = -offsets[None, :, None]  # rows: upwards from the centre (rows count down)
    cos = np.cos(SPRITE_ORIENTATIONS)[:, None, None]
    sin = np.sin(SPRITE_ORIENTATIONS)[:, None, None]
    radius = SPRITE_RADIUS * SPRITE_SCALES[:, None, None, None]  # [6, 1, 1, 1]
    # Rotate by minus the orientation: the shape itself turns counter-clockwise.
    u = (cos * dx + sin * dy)[None] / radius  # [6, 40, 33, 33]
    v = (-sin * dx + cos * dy)[None] / radius
    patches = np.stack([sprite_inside(shape, u, v) for shape in range(len(SPRITE_SHAPES))])
    patches = patches.astype(np.uint8)
    patches.flags.writeable = False
    return patches


# --------------------------------------------------------------------------- TFDS data sets


@dataclasses.dataclass(frozen=True)
class _TFDSFactors:
    """Which TFDS features are the factors of a data set, in disentanglement_lib's order."""

    features: tuple[str, ...]  # every ClassLabel feature that identifies an image
    latent: tuple[int, ...]  # which of them are factors; the others are drawn at random
    split: str  # the TFDS split string disentanglement_lib's copy of the data corresponds to
    num_levels: int


TFDS_GROUND_TRUTH = {
    # 737,280 images, each combination once; the images are 0/1.
    "dsprites": _TFDSFactors(
        features=("label_shape", "label_scale", "label_orientation", "label_x_position",
                  "label_y_position"),
        latent=(0, 1, 2, 3, 4), split="train", num_levels=2),
    # 480,000 images, each combination once.
    "shapes3d": _TFDSFactors(
        features=("label_floor_hue", "label_wall_hue", "label_object_hue", "label_scale",
                  "label_shape", "label_orientation"),
        latent=(0, 1, 2, 3, 4, 5), split="train", num_levels=256),
    # 48,600 images: 5 categories x 10 instances x 9 elevations x 18 azimuths x 6 lightings,
    # each once across TFDS's train (instances 4, 6, 7, 8, 9) and test (0, 1, 2, 3, 5) splits.
    # disentanglement_lib reads both and draws the instance at random: it is not a factor.
    "smallnorb": _TFDSFactors(
        features=("label_category", "instance", "label_elevation", "label_azimuth",
                  "label_lighting"),
        latent=(0, 2, 3, 4), split="train+test", num_levels=256),
}


class TFDSGroundTruth(GroundTruthData):
    """A TFDS data set with ground-truth factors, read into host memory once.

    "dsprites": factors shape, scale, orientation, x_position, y_position (3, 6, 40, 32, 32);
    64 x 64 x 1 images in {0, 1}. "shapes3d": floor_hue, wall_hue, object_hue, scale, shape,
    orientation (10, 10, 10, 8, 4, 15); 64 x 64 x 3. "smallnorb": category, elevation,
    azimuth, lighting (5, 9, 18, 6); 96 x 96 x 1, the left camera's "image" ("image2" is the
    right camera's). The factors are TFDS's ClassLabel features (named without "label_"), in
    disentanglement_lib's order.

    `sample_observations_from_factors` looks up the image with the requested factors. On the
    complete data every combination of the features exists exactly once. For smallnorb this
    follows disentanglement_lib's `SmallNORB`: TFDS's train and test splits together, the
    instance (0..9) drawn uniformly from random_state for each image (its
    `SplitDiscreteStateSpace.sample_all_factors`), then the image of (category, instance,
    elevation, azimuth, lighting). For dsprites and shapes3d random_state is not used.
    Differences from disentanglement_lib: images stay uint8 levels at TFDS's size
    (disentanglement_lib resizes smallnorb to 64 x 64 with PIL's antialiasing); and partial or
    mocked data, where a combination may be missing or repeated, is accepted: a missing one
    raises ValueError when requested, a repeated one gives its first image in split order.

    Memory: every image is held (dsprites 3.0 GB, shapes3d 5.9 GB, smallnorb 0.45 GB), about
    twice that while the split is read.

    Args:
        name: "dsprites", "shapes3d" or "smallnorb".
        data_dir, download: as in `input_pipeline.load_dataset` (None: $TFDS_DATA_DIR, else
            TFDS's default; with download=False missing data raises
            `input_pipeline.DatasetNotFoundError`).
    """

    def __init__(self, name: str, *, data_dir: str | os.PathLike | None = None,
                 download: bool = False):
        if name not in TFDS_GROUND_TRUTH:
            raise ValueError(f"no ground-truth factors known for TFDS data set {name!r}; "
                             f"known: {', '.join(TFDS_GROUND_TRUTH)}")
        # Imported here: input_pipeline imports this module (for "sprites").
        from vae_jax import input_pipeline

        self.name = name
        self._spec = spec = TFDS_GROUND_TRUTH[name]
        builder = input_pipeline.tfds_builder(name, data_dir=data_dir, download=download)
        features = builder.info.features
        self._feature_sizes = tuple(int(features[key].num_classes) for key in spec.features)
        self.factor_names = tuple(spec.features[f].removeprefix("label_") for f in spec.latent)
        self.factor_sizes = tuple(self._feature_sizes[f] for f in spec.latent)
        self.num_levels = spec.num_levels
        arrays = input_pipeline.read_tfds_features(name, builder, split=spec.split,
                                                   keys=("image", *spec.features))
        self.images = arrays.pop("image")  # [N, H, W, C] uint8
        self.observation_shape = tuple(self.images.shape[1:])
        codes = np.ravel_multi_index([arrays[key].astype(np.int64) for key in spec.features],
                                     self._feature_sizes)
        self._order = np.argsort(codes, kind="stable")  # first occurrence first
        self._sorted_codes = codes[self._order]

    def sample_observations_from_factors(self, factors, random_state: Rng) -> np.ndarray:
        """[N, H, W, C] uint8: for each row of factors, the image with those factor values
        (smallnorb: and a random instance).

        Raises:
            ValueError: bad factors (see `check_factors`), or a combination the data lacks.
        """
        factors = self.check_factors(factors)
        spec = self._spec
        columns = [None] * len(spec.features)
        for column, f in zip(factors.T, spec.latent):
            columns[f] = column
        for f, size in enumerate(self._feature_sizes):
            if columns[f] is None:
                columns[f] = _integers(random_state, size, len(factors))
        codes = np.ravel_multi_index(columns, self._feature_sizes)
        where = np.searchsorted(self._sorted_codes, codes)
        found = where < len(self._sorted_codes)
        found[found] = self._sorted_codes[where[found]] == codes[found]
        if not found.all():
            missing = dict(zip(spec.features, (int(c[~found][0]) for c in columns)))
            raise ValueError(f"{self.name}: no image has the features {missing} (the complete "
                             "data set has every combination; this copy is partial)")
        return self.images[self._order[where]]


GROUND_TRUTH_NAMES = ("sprites", *TFDS_GROUND_TRUTH)


def make_ground_truth(name: str, *, data_dir: str | os.PathLike | None = None,
                      download: bool = False) -> GroundTruthData:
    """The ground-truth data set a run's `config.data.name` names: `Sprites()` for "sprites",
    `TFDSGroundTruth` for "dsprites", "shapes3d", "smallnorb"; a clear ValueError otherwise."""
    if name == "sprites":
        return Sprites()
    if name in TFDS_GROUND_TRUTH:
        return TFDSGroundTruth(name, data_dir=data_dir, download=download)
    raise ValueError(f"data set {name!r} has no known ground-truth factors; the "
                     f"disentanglement metrics need one of {', '.join(GROUND_TRUTH_NAMES)}")
