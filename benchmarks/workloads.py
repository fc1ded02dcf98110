"""The four benchmark workloads: sizes, run lengths, and their GEMM shapes and FLOPs.

FLOP counting (stated once, used for every workload): a GEMM [m, k] x [k, n] costs 2 m k n
FLOPs. A training step costs 3x the forward GEMM FLOPs: for every layer, the forward product
y = x W, the input gradient dx = dy W^T and the weight gradient dW = x^T dy have the same
count (the first layer's dx is not needed, but it is counted, as the usual 3x rule does).
Elementwise work (activations, the loss, sampling, Adam) is not counted. A convolution counts
as its im2col GEMM (output pixels x (kernel taps * C_in) x C_out); a stride-2 transposed
convolution counts as (input pixels) x C_in x (taps * C_out), the FLOPs of the transposed
convolution itself (not those of our sub-pixel implementation, which multiplies by zero taps).
W4 is inference: K decoder forward passes per example (the single encoder pass is negligible).
"""

from __future__ import annotations

import dataclasses

IMAGE_PIXELS = 28 * 28


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark workload and how long to run it."""

    name: str
    description: str
    config: str  # experiment file, relative to the repository root
    batch_size: int
    steps_per_dispatch: int
    window_steps: int  # steps per logging window (a multiple of steps_per_dispatch)
    num_windows: int  # steady-state windows per run (one warm-up window comes first)
    quick_window_steps: int
    hidden: tuple = ()
    latent_dim: int = 0
    activation: str = "relu"


W1 = Workload(
    name="W1", description="pytorch/examples VAE: MLP 784-400-20, ReLU, batch 128",
    config="experiments/bench_pytorch_example.py", batch_size=128, steps_per_dispatch=100,
    window_steps=400, num_windows=6, quick_window_steps=100, hidden=(400,), latent_dim=20,
)
W2 = Workload(
    name="W2", description="Burda et al. VAE: MLP 784-200-200-50, tanh, batch 20",
    config="experiments/bench_burda.py", batch_size=20, steps_per_dispatch=100,
    window_steps=1000, num_windows=6, quick_window_steps=100, hidden=(200, 200), latent_dim=50,
    activation="tanh",
)
W3 = Workload(
    name="W3", description="conv VAE of mnist_conv.py (32, 64 channels, Z=16), batch 128",
    config="experiments/bench_conv.py", batch_size=128, steps_per_dispatch=1,
    window_steps=40, num_windows=5, quick_window_steps=4, latent_dim=16,
)
# W4: importance-sampled NLL, K = 5000 (chunks of 100), W2's model, the 10,000 test images.
W4 = Workload(
    name="W4", description="IS NLL, K=5000, W2's model, 10k test images",
    config="experiments/bench_burda.py", batch_size=200, steps_per_dispatch=1,
    window_steps=1, num_windows=0, quick_window_steps=1, hidden=(200, 200), latent_dim=50,
    activation="tanh",
)
W4_NUM_SAMPLES, W4_CHUNK = 5000, 100
W4_QUICK_NUM_SAMPLES, W4_QUICK_CHUNK = 100, 50
CONV_FEATURES = (32, 64)

TRAINING = (W1, W2, W3)
ALL = (W1, W2, W3, W4)
BY_NAME = {w.name: w for w in ALL}


def mlp_layers(w: Workload) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every dense layer of an MLP VAE; the two heads count as one."""
    enc = (IMAGE_PIXELS,) + w.hidden
    dec = (w.latent_dim,) + tuple(reversed(w.hidden)) + (IMAGE_PIXELS,)
    layers = list(zip(enc[:-1], enc[1:])) + [(enc[-1], 2 * w.latent_dim)]
    return layers + list(zip(dec[:-1], dec[1:]))


def forward_gemms(w: Workload, rows: int) -> list[tuple[int, int, int]]:
    """The forward GEMMs (m, k, n) of one step on `rows` examples."""
    if w.name == "W3":
        c1, c2 = CONV_FEATURES
        z = w.latent_dim
        return [
            (rows * 14 * 14, 9 * 1, c1),  # conv 1 -> 32, stride 2, 28 -> 14
            (rows * 7 * 7, 9 * c1, c2),  # conv 32 -> 64, stride 2, 14 -> 7
            (rows, 7 * 7 * c2, 2 * z),  # mean and log-variance heads
            (rows, z, 7 * 7 * c2),  # decoder projection to 7x7x64
            (rows * 7 * 7, c2, 9 * c1),  # transposed conv 64 -> 32, 7 -> 14
            (rows * 14 * 14, c1, 9 * 1),  # transposed conv 32 -> 1, 14 -> 28
        ]
    if w.name == "W4":
        dec = (w.latent_dim,) + tuple(reversed(w.hidden)) + (IMAGE_PIXELS,)
        return [(rows, a, b) for a, b in zip(dec[:-1], dec[1:])]
    return [(rows, a, b) for a, b in mlp_layers(w)]


def step_gemms(w: Workload, rows: int) -> list[tuple[int, int, int]]:
    """Every GEMM of one training step: forward (m, k, n), dx (m, n, k), dW (k, m, n)."""
    out = []
    for m, k, n in forward_gemms(w, rows):
        out += [(m, k, n), (m, n, k), (k, m, n)]
    return out


def gemm_flops(shapes) -> float:
    return float(sum(2 * m * k * n for m, k, n in shapes))


def flops_per_image(w: Workload, num_samples: int = W4_NUM_SAMPLES) -> float:
    """Counted FLOPs per training image (W1-W3) or per evaluated image (W4)."""
    if w.name == "W4":
        return num_samples * gemm_flops(forward_gemms(w, 1))
    return 3.0 * gemm_flops(forward_gemms(w, 1))
