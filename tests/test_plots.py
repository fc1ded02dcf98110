"""Every picture of vae_jax.plots is written, opens as a PNG, and has the layout it promises."""

import json

import numpy as np
import pytest
from PIL import Image

from vae_jax import plots

H, W = 8, 6  # non-square, so rows and columns cannot be confused
SCALE, PAD = 2, 1
CELL_H, CELL_W = H * SCALE + PAD, W * SCALE + PAD


def open_png(path):
    """(width, height) and the pixels of a PNG, after PIL's integrity check."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size, np.asarray(image)


def images(n, value=None, channels=1, seed=0):
    if value is not None:
        return np.full((n, H, W, channels), value, np.float32)
    return np.random.default_rng(seed).uniform(size=(n, H, W, channels)).astype(np.float32)


def grid_size(rows, cols, label_width=0):
    return label_width + cols * CELL_W + PAD, rows * CELL_H + PAD


def cell(pixels, row, col, label_width=0):
    top, left = PAD + row * CELL_H, label_width + PAD + col * CELL_W
    return pixels[top : top + H * SCALE, left : left + W * SCALE]


def test_image_grid_size_and_pixels(tmp_path):
    grid = np.stack([images(4, 0.0), images(4, 1.0), images(4, 0.5)])  # [3, 4, H, W, 1]
    size, pixels = open_png(plots.image_grid(tmp_path / "g.png", grid, scale=SCALE, pad=PAD))
    assert size == grid_size(3, 4)
    assert (cell(pixels, 0, 3) == 0).all() and (cell(pixels, 1, 0) == 255).all()
    assert (cell(pixels, 2, 2) == 128).all()
    rgb = images(6, channels=3).reshape(2, 3, H, W, 3)
    size, pixels = open_png(plots.image_grid(tmp_path / "rgb.png", rgb, scale=SCALE, pad=PAD))
    assert size == grid_size(2, 3) and pixels.shape[-1] == 3
    with pytest.raises(ValueError, match="expected"):
        plots.image_grid(tmp_path / "bad.png", images(4), scale=SCALE)


def levels(n, channels=1, seed=0):
    """[n, H, W, channels] random images at exact 8-bit levels k / 255, so every PNG pixel
    is known exactly."""
    k = np.random.default_rng(seed).integers(0, 256, size=(n, H, W, channels))
    return (k / 255).astype(np.float32)


def as_pixels(image_hwc):
    """The upscaled uint8 pixels one [H, W, C] image of `levels` should draw ([.., C] dropped
    for grayscale, as PIL reads it back)."""
    k = np.round(np.asarray(image_hwc, np.float64) * 255).astype(np.uint8)
    k = k.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    return k[..., 0] if k.shape[-1] == 1 else k


def reference_canvas(images_rchwc, label_width=0):
    """The grid pixel by pixel from the layout rule: pixel (y, x) lies in cell (r, c) at offset
    (dy, dx) when y = PAD + r * CELL_H + dy, x = label_width + PAD + c * CELL_W + dx, with
    dy < H * SCALE and dx < W * SCALE; everything else (and a NaN cell) is white."""
    rows, cols, _, _, channels = images_rchwc.shape
    width, height = grid_size(rows, cols, label_width)
    canvas = np.full((height, width, channels), 255, np.uint8)
    for y in range(height):
        for x in range(label_width, width):
            r, dy = divmod(y - PAD, CELL_H)
            c, dx = divmod(x - label_width - PAD, CELL_W)
            if (y < PAD or x < label_width + PAD or r >= rows or c >= cols
                    or dy >= H * SCALE or dx >= W * SCALE):
                continue
            value = images_rchwc[r, c, dy // SCALE, dx // SCALE]
            if not np.isnan(value).all():
                canvas[y, x] = np.round(value.astype(np.float64) * 255)
    return canvas[..., 0] if channels == 1 else canvas


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_draws_every_pixel_where_the_layout_says(tmp_path, channels):
    grid = levels(6, channels).reshape(2, 3, H, W, channels)
    grid[1, 2] = np.nan  # a blank cell
    grid[0, 1, 0, 0] = 0.0  # a black top-left pixel, then a white bottom-right one
    grid[0, 1, H - 1, W - 1] = 1.0
    _, pixels = open_png(plots.image_grid(tmp_path / "g.png", grid, scale=SCALE, pad=PAD))
    np.testing.assert_array_equal(pixels, reference_canvas(grid))
    # The same corners by hand: cell (0, 1) starts at (PAD, PAD + CELL_W).
    top, left = PAD, PAD + CELL_W
    assert (pixels[top : top + SCALE, left : left + SCALE] == 0).all()
    bottom, right = top + H * SCALE, left + W * SCALE
    assert (pixels[bottom - SCALE : bottom, right - SCALE : right] == 255).all()
    assert (pixels[bottom, left:right] == 255).all()  # the white separator below the cell


def test_reconstructions_and_traversals_put_known_images_in_known_cells(tmp_path):
    inputs, recons = levels(5, seed=1), levels(5, seed=2)
    path = plots.reconstructions(tmp_path / "r.png", inputs, recons, columns=3, scale=SCALE)
    _, pixels = open_png(path)
    for i in range(5):  # example i: column i % 3 of row pair i // 3, input above its output
        pair, col = divmod(i, 3)
        np.testing.assert_array_equal(cell(pixels, 2 * pair, col), as_pixels(inputs[i]))
        np.testing.assert_array_equal(cell(pixels, 2 * pair + 1, col), as_pixels(recons[i]))

    traversal = levels(3 * 4, seed=3).reshape(3, 4, H, W, 1)
    path = plots.latent_traversals(tmp_path / "t.png", traversal, dims=[2, 0, 1],
                                   kl_per_dim=[1.0, 0.5, 0.0], scale=SCALE)
    _, pixels = open_png(path)
    np.testing.assert_array_equal(pixels[:, 72:], reference_canvas(traversal, 72)[:, 72:])
    np.testing.assert_array_equal(cell(pixels, 2, 3, label_width=72), as_pixels(traversal[2, 3]))


def test_reconstructions_put_inputs_above_their_reconstructions(tmp_path):
    inputs, recons = images(10, 1.0), images(10, 0.0)
    path = plots.reconstructions(tmp_path / "r.png", inputs, recons, columns=4, scale=SCALE)
    size, pixels = open_png(path)
    assert size == grid_size(rows=6, cols=4)  # 3 row pairs for 10 examples of 4 per row
    for pair in range(3):
        assert (cell(pixels, 2 * pair, 0) == 255).all()  # inputs
        assert (cell(pixels, 2 * pair + 1, 0) == 0).all()  # reconstructions
    # The 11th and 12th cells of the last pair are blank (background).
    assert (cell(pixels, 5, 3) == 255).all() and (cell(pixels, 5, 1) == 0).all()
    with pytest.raises(ValueError, match="differ in shape"):
        plots.reconstructions(tmp_path / "bad.png", inputs, recons[:5])


def test_prior_samples_rows(tmp_path):
    size, _ = open_png(plots.prior_samples(tmp_path / "s.png", images(12), rows=3, scale=SCALE))
    assert size == grid_size(rows=3, cols=4)


def test_latent_traversals_have_one_labelled_row_per_dimension(tmp_path):
    traversal = images(5 * 7).reshape(5, 7, H, W, 1)
    path = plots.latent_traversals(tmp_path / "t.png", traversal, dims=[3, 0, 4, 1, 2],
                                   kl_per_dim=[2.5, 1.0, 0.5, 0.0, 0.0], scale=SCALE)
    size, pixels = open_png(path)
    assert size == grid_size(rows=5, cols=7, label_width=72)
    # The label margin holds text: some dark pixels on the white background.
    assert pixels[:, :72].min() < 128 and pixels[:, :72].max() == 255
    with pytest.raises(ValueError, match="row labels"):
        plots.latent_traversals(tmp_path / "bad.png", traversal, dims=[0], kl_per_dim=[1.0])


def test_interpolation_is_one_row_with_its_endpoints(tmp_path):
    path = plots.interpolation(tmp_path / "i.png", images(10, 0.5), start=images(1, 0.0)[0],
                               end=images(1, 1.0)[0], scale=SCALE)
    size, pixels = open_png(path)
    assert size == grid_size(rows=1, cols=14)  # start, gap, 10 steps, gap, end
    assert (cell(pixels, 0, 0) == 0).all() and (cell(pixels, 0, 13) == 255).all()
    assert (cell(pixels, 0, 2) == 128).all()


def test_latent_manifold_is_a_square_grid(tmp_path):
    grid = images(25).reshape(5, 5, H, W, 1)
    size, _ = open_png(plots.latent_manifold(tmp_path / "m.png", grid, scale=SCALE))
    assert size == grid_size(rows=5, cols=5)


def test_default_scale_makes_small_images_visible():
    assert plots.default_scale((8, 8)) == 6
    assert plots.default_scale((28, 28)) == 2
    assert plots.default_scale((100, 60)) == 1


@pytest.mark.parametrize("num_classes", [None, 3, 12])
def test_latent_scatter(tmp_path, num_classes):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(60, 2))
    labels = None if num_classes is None else np.arange(60) % num_classes
    size, _ = open_png(plots.latent_scatter(tmp_path / "sc.png", points, labels=labels,
                                            dims=(4, 1)))
    assert size == (600, 550)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_training_curves_with_and_without_validation(tmp_path):
    train = write_jsonl(tmp_path / "metrics.jsonl", [
        {"step": s, "recon_nats": 50.0 - s, "kl_nats": 1.0 + 0.1 * s, "elbo_nats": -51.0 + s}
        for s in (10, 20, 30)])
    size, _ = open_png(plots.training_curves(tmp_path / "a.png", train))
    assert size == (1200, 350)  # three panels
    evals = write_jsonl(tmp_path / "eval_metrics.jsonl", [
        {"step": s, "val_elbo_nats": -50.0 + s, "val_recon_nats": 49.0 - s, "val_kl_nats": 1.0,
         "val_active_units": 3} for s in (15, 30)])
    size, _ = open_png(plots.training_curves(tmp_path / "b.png", train, evals))
    assert size == (1600, 350)  # plus the active units


def test_series_keeps_the_finite_values_of_the_records_that_hold_the_key():
    records = [{"step": 1, "a": 2.0}, {"step": 2}, {"step": 3, "a": None},
               {"step": 4, "a": float("nan")}, {"step": 5, "a": -1.5}, {"step": 6, "b": 1.0}]
    assert plots.series(records, "a") == ([1, 5], [2.0, -1.5])
    assert plots.series(records, "missing") == ([], [])
