"""Pictures of a trained VAE, one PNG per function; each returns the path it wrote.

Image grids are tiled with Pillow at an exact pixel size, so a reader (or a test) can count
the rows: a grid of R x C cells of [H, W] images at `scale` with `pad` pixels between and
around the cells is `R * (H * scale + pad) + pad` pixels high and `label_width +
C * (W * scale + pad) + pad` wide. The scatter and the training curves are drawn with
matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend change).

Inputs are numpy arrays already computed from a model (`vae_jax.evaluate.save_plots` does
that); images are [..., H, W, C] floats in [0, 1] with C = 1 (grayscale) or 3 (RGB).
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from vae_jax import workdir

_BACKGROUND = 255  # white separators and label margins
_CELL_PIXELS = 48  # small images are upscaled to about this many pixels per side


def default_scale(image_hw) -> int:
    """The integer upscaling that makes an image about `_CELL_PIXELS` on its longer side."""
    return max(1, -(-_CELL_PIXELS // max(image_hw)))


def image_grid(path, images_rchwc, *, scale: int | None = None, pad: int = 1,
               row_labels=None, label_width: int = 0) -> pathlib.Path:
    """Writes R x C images [R, C, H, W, Ch] in [0, 1] as one PNG grid; NaN cells stay blank.

    `row_labels` (R strings) are written into a left margin `label_width` pixels wide.
    """
    images = np.asarray(images_rchwc, np.float32)
    if images.ndim != 5 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected [R, C, H, W, 1 or 3] images; got shape {images.shape}")
    rows, cols, h, w, channels = images.shape
    scale = default_scale((h, w)) if scale is None else scale
    cell_h, cell_w = h * scale, w * scale
    height = rows * (cell_h + pad) + pad
    width = label_width + cols * (cell_w + pad) + pad
    canvas = np.full((height, width, channels), _BACKGROUND, np.uint8)
    pixels = (np.clip(np.nan_to_num(images, nan=1.0), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    for r in range(rows):
        for c in range(cols):
            if np.isnan(images[r, c]).all():
                continue
            top = pad + r * (cell_h + pad)
            left = label_width + pad + c * (cell_w + pad)
            canvas[top : top + cell_h, left : left + cell_w] = pixels[r, c]
    image = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    if row_labels is not None:
        if len(row_labels) != rows:
            raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
        draw = ImageDraw.Draw(image)
        ink = 0 if channels == 1 else (0, 0, 0)
        for r, text in enumerate(row_labels):
            draw.text((2, pad + r * (cell_h + pad) + cell_h // 2), str(text), fill=ink,
                      anchor="lm")
    path = pathlib.Path(path)
    image.save(path)
    return path


def _blank_like(image_hwc):
    return np.full_like(np.asarray(image_hwc, np.float32), np.nan)


def _rows_of(images_nhwc, columns: int):
    """[N, H, W, C] -> [ceil(N / columns), columns, H, W, C], blank cells at the end."""
    images = np.asarray(images_nhwc, np.float32)
    rows = -(-len(images) // columns)
    out = np.full((rows * columns,) + images.shape[1:], np.nan, np.float32)
    out[: len(images)] = images
    return out.reshape((rows, columns) + images.shape[1:])


def reconstructions(path, inputs_nhwc, recons_nhwc, *, columns: int = 8,
                    scale: int | None = None) -> pathlib.Path:
    """Inputs above their reconstructions: row pairs of `columns` examples each.

    N examples make 2 * ceil(N / columns) rows; row 2i holds inputs, row 2i + 1 their
    reconstructions.
    """
    if np.shape(inputs_nhwc) != np.shape(recons_nhwc):
        raise ValueError(f"inputs {np.shape(inputs_nhwc)} and reconstructions "
                         f"{np.shape(recons_nhwc)} differ in shape")
    columns = min(columns, len(inputs_nhwc))
    inputs_rc, recons_rc = _rows_of(inputs_nhwc, columns), _rows_of(recons_nhwc, columns)
    pairs = np.stack([inputs_rc, recons_rc], axis=1).reshape((-1,) + inputs_rc.shape[1:])
    return image_grid(path, pairs, scale=scale)


def prior_samples(path, samples_nhwc, *, rows: int, scale: int | None = None) -> pathlib.Path:
    """Decoded prior draws in `rows` rows."""
    columns = -(-len(samples_nhwc) // rows)
    return image_grid(path, _rows_of(samples_nhwc, columns), scale=scale)


def latent_traversals(path, images_rshwc, *, dims, kl_per_dim, factors=None,
                      scale: int | None = None) -> pathlib.Path:
    """One row per latent dimension: the decoded images as that dimension moves over `values`.

    Args:
      images_rshwc: [R, S, H, W, C] decoded traversals, row r for dimension `dims[r]` (rows
        ordered as the caller wants them, e.g. by KL descending).
      dims: [R] latent indices; kl_per_dim: [R] their KL (nats), both written as row labels.
      factors: [R] optional strings appended to the labels (the factor a dimension captures
        best, `disentanglement.factor_of_each_code`).
    """
    labels = [f"z{int(d)} KL {float(k):.2f}" for d, k in zip(dims, kl_per_dim)]
    if factors is not None:
        labels = [f"{label} {factor}" for label, factor in zip(labels, factors)]
    return image_grid(path, images_rshwc, scale=scale, row_labels=labels,
                      label_width=72 if factors is None else 170)


def interpolation(path, images_shwc, *, start=None, end=None,
                  scale: int | None = None) -> pathlib.Path:
    """One row: [start input,] the decoded path [S], [end input]."""
    cells = list(np.asarray(images_shwc, np.float32))
    if start is not None:
        cells = [np.asarray(start, np.float32), _blank_like(start)] + cells
    if end is not None:
        cells = cells + [_blank_like(end), np.asarray(end, np.float32)]
    return image_grid(path, np.stack(cells)[None], scale=scale)


def latent_manifold(path, images_gghwc, *, scale: int | None = None) -> pathlib.Path:
    """The decoded [G, G] grid of a 2-latent model (rows: z_1 decreasing; columns: z_0)."""
    return image_grid(path, images_gghwc, scale=scale)


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def latent_scatter(path, points_n2, *, labels=None, dims=(0, 1)) -> pathlib.Path:
    """Scatter of two latent coordinates of the posterior means, coloured by class label."""
    points = np.asarray(points_n2, np.float64)
    fig = _figure(6.0, 5.5)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.6)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        if len(classes) <= 10:
            for i, cls in enumerate(classes):
                chosen = labels == cls
                ax.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.7,
                           color=f"C{i}", label=str(cls))
            ax.legend(markerscale=3, fontsize="small", loc="best", title="label")
        else:
            sc = ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7, c=labels, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(f"E[z{dims[0]} | x]")
    ax.set_ylabel(f"E[z{dims[1]} | x]")
    ax.set_title("posterior means (the two highest-KL dimensions)")
    path = pathlib.Path(path)
    fig.savefig(path)
    return path


def series(records: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of `key` over the metric records that hold a finite value of it; two
    empty lists when none does."""
    pairs = [(r["step"], r[key]) for r in records
             if r.get(key) is not None and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _plot(ax, steps_values, *fmt, **kwargs):
    """Plots a (steps, values) series unless it is empty (no legend entry for a missing one)."""
    if steps_values[0]:
        ax.plot(*steps_values, *fmt, **kwargs)


def training_curves(path, metrics_path: str | os.PathLike,
                    eval_metrics_path: str | os.PathLike | None = None) -> pathlib.Path:
    """Reconstruction, KL and ELBO over steps (metrics.jsonl), with the validation ELBO and
    the active units when eval_metrics.jsonl holds them (`val_elbo_nats`; `active_units` or
    `val_active_units`)."""
    train_records = workdir.read_jsonl(metrics_path)
    eval_records = workdir.read_jsonl(eval_metrics_path) if eval_metrics_path else []
    active_key = next((k for k in ("val_active_units", "active_units")
                       if any(k in r for r in eval_records)), None)
    panels = 3 + (active_key is not None)
    fig = _figure(4.0 * panels, 3.5)
    axes = fig.subplots(1, panels)
    for ax, key, title in ((axes[0], "recon_nats", "reconstruction (nats)"),
                           (axes[1], "kl_nats", "KL (nats)")):
        _plot(ax, series(train_records, key), label="train")
        _plot(ax, series(eval_records, f"val_{key}"), "o-", label="validation")
        ax.set_title(title)
    _plot(axes[2], series(train_records, "elbo_nats"), label="train")
    _plot(axes[2], series(eval_records, "val_elbo_nats"), "o-", label="validation")
    axes[2].set_title("ELBO (nats)")
    if active_key is not None:
        _plot(axes[3], series(eval_records, active_key), "o-", label="validation")
        axes[3].set_title("active units")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    path = pathlib.Path(path)
    fig.savefig(path)
    return path
