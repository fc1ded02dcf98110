"""The PyTorch baselines: the same models, loss, optimiser and batch as the vae_jax workloads.

Two flavours of every training workload:
  eager: the code of pytorch/examples `vae/main.py` (sigmoid decoder, `F.binary_cross_entropy`
    summed over the batch, `loss.item()` every step, default threads), with the data as
    in-memory tensors instead of a DataLoader and a fresh `torch.bernoulli` binarisation of
    every batch.
  fast: the fastest honest version: `torch.compile` of the forward pass and loss (binarisation
    and latent noise inside the compiled graph), logits with `binary_cross_entropy_with_logits`
    averaged over the batch (exactly vae_jax's loss), Adam with `fused=True`, threads = cores.
    `compile=False` (the --quick mode) keeps everything else.

Only this module imports torch; it never imports JAX.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import workloads
from torch import nn


class MLPVAE(nn.Module):
    """pytorch/examples' VAE, generalised to several hidden layers and tanh."""

    def __init__(self, hidden, latent_dim, activation):
        super().__init__()
        self.act = {"relu": F.relu, "tanh": torch.tanh}[activation]
        enc = (workloads.IMAGE_PIXELS,) + tuple(hidden)
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.fc_mean = nn.Linear(enc[-1], latent_dim)
        self.fc_logvar = nn.Linear(enc[-1], latent_dim)
        dec = (latent_dim,) + tuple(reversed(hidden)) + (workloads.IMAGE_PIXELS,)
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dec[:-1], dec[1:]))

    def encode(self, x):
        h = x.view(x.shape[0], -1)
        for layer in self.enc:
            h = self.act(layer(h))
        return self.fc_mean(h), self.fc_logvar(h)

    def decode_logits(self, z):
        h = z
        for layer in self.dec[:-1]:
            h = self.act(layer(h))
        return self.dec[-1](h)


class ConvVAE(nn.Module):
    """The conv VAE of experiments/mnist_conv.py: 3x3 stride-2 convs, transposed-conv decoder."""

    def __init__(self, latent_dim=16, features=workloads.CONV_FEATURES):
        super().__init__()
        c1, c2 = features
        self.conv1 = nn.Conv2d(1, c1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.fc_mean = nn.Linear(7 * 7 * c2, latent_dim)
        self.fc_logvar = nn.Linear(7 * 7 * c2, latent_dim)
        self.project = nn.Linear(latent_dim, 7 * 7 * c2)
        self.deconv1 = nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1)
        self.deconv2 = nn.ConvTranspose2d(c1, 1, 3, stride=2, padding=1, output_padding=1)
        self.c2 = c2

    def encode(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x.view(-1, 1, 28, 28)))))
        h = h.flatten(1)
        return self.fc_mean(h), self.fc_logvar(h)

    def decode_logits(self, z):
        h = F.relu(self.project(z)).view(-1, self.c2, 7, 7)
        return self.deconv2(F.relu(self.deconv1(h))).flatten(1)


def make_model(w: workloads.Workload) -> nn.Module:
    if w.name == "W3":
        return ConvVAE(latent_dim=w.latent_dim)
    return MLPVAE(w.hidden, w.latent_dim, w.activation)


def examples_loss(model, x):
    """pytorch/examples `loss_function`: BCE on sigmoid outputs + KL, summed over the batch."""
    xb = torch.bernoulli(x)
    mu, logvar = model.encode(xb)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    recon = torch.sigmoid(model.decode_logits(z))
    bce = F.binary_cross_entropy(recon, xb, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def vae_jax_loss(model, x):
    """vae_jax's loss: mean over the batch of (BCE on logits summed over pixels + KL)."""
    xb = torch.bernoulli(x)
    mu, logvar = model.encode(xb)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    logits = model.decode_logits(z)
    bce = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / x.shape[0]


def _load(cache_path):
    data = np.load(cache_path)
    return data["train"], data["test"]


def train_windows(w: workloads.Workload, cache_path: str, *, flavour: str, window_steps: int,
                  num_windows: int, compile_model: bool = True, seed: int = 0) -> dict:
    """Trains for 1 + num_windows windows; returns the wall time of each window."""
    torch.manual_seed(seed)
    if flavour == "fast":
        torch.set_num_threads(os.cpu_count())
    train_u8, _ = _load(cache_path)
    x_all = torch.from_numpy(train_u8.reshape(len(train_u8), -1).astype(np.float32) / 255.0)
    model = make_model(w)
    if flavour == "eager":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = examples_loss
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        loss_fn = torch.compile(vae_jax_loss) if compile_model else vae_jax_loss
    b = w.batch_size
    steps_per_epoch = len(x_all) // b
    perm, epoch = torch.randperm(len(x_all)), 0
    model.train()
    times, step, train_loss = [], 0, 0.0
    for _ in range(1 + num_windows):
        start = time.perf_counter()
        for _ in range(window_steps):
            i = step % steps_per_epoch
            if i == 0 and step:
                perm, epoch = torch.randperm(len(x_all)), epoch + 1
            x = x_all[perm[i * b:(i + 1) * b]]
            optimizer.zero_grad()
            loss = loss_fn(model, x)
            loss.backward()
            if flavour == "eager":
                train_loss += loss.item()
            optimizer.step()
            step += 1
        if flavour != "eager":
            train_loss += loss.item()
        times.append(time.perf_counter() - start)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"non-finite loss in the torch {flavour} run")
    return {"window_seconds": times, "window_images": window_steps * b,
            "threads": torch.get_num_threads()}


def nll_estimate(model, x, *, num_samples, chunk_size):
    """Batched importance-sampled log p(x) [B], the estimator of
    `vae_jax.evaluate.importance_sampled_log_likelihood`: a running logsumexp over chunks."""
    b = x.shape[0]
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    log_sum = torch.full((b,), -math.inf)
    x_cb = x.unsqueeze(0).expand(chunk_size, b, x.shape[1]).reshape(chunk_size * b, -1)
    log2pi = math.log(2 * math.pi)
    for _ in range(num_samples // chunk_size):
        eps = torch.randn(chunk_size, b, mu.shape[1])
        z = mu + std * eps
        logits = model.decode_logits(z.reshape(chunk_size * b, -1))
        ll = -F.binary_cross_entropy_with_logits(logits, x_cb, reduction="none").sum(-1)
        log_prior = -0.5 * (z.pow(2) + log2pi).sum(-1)
        log_q = -0.5 * (eps.pow(2) + logvar + log2pi).sum(-1)
        log_w = ll.view(chunk_size, b) + log_prior - log_q
        log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_w, dim=0))
    return log_sum - math.log(num_samples)


def nll_windows(w: workloads.Workload, cache_path: str, *, start: int, stop: int,
                num_samples: int, chunk_size: int, flavour: str) -> dict:
    """Estimates log p(x) of test images [start, stop) in batches; one window per batch."""
    torch.manual_seed(0)
    if flavour == "fast":
        torch.set_num_threads(os.cpu_count())
    _, test_u8 = _load(cache_path)
    x = torch.from_numpy((test_u8.reshape(len(test_u8), -1) > 127).astype(np.float32))
    model = make_model(w).eval()
    times, total = [], 0.0
    with torch.inference_mode():
        for s in range(start, stop, w.batch_size):
            t = time.perf_counter()
            log_px = nll_estimate(model, x[s:s + w.batch_size], num_samples=num_samples,
                                  chunk_size=chunk_size)
            total += float(log_px.sum())
            times.append(time.perf_counter() - t)
    if not math.isfinite(total):
        raise FloatingPointError("non-finite log p(x) in the torch NLL run")
    return {"window_seconds": times, "window_images": w.batch_size,
            "threads": torch.get_num_threads()}


def gemm_rates(shapes, *, min_seconds=0.2) -> list[float]:
    """Seconds per float32 `torch.mm` at each (m, k, n), with threads = cores."""
    torch.set_num_threads(os.cpu_count())
    out = []
    for m, k, n in shapes:
        a, bm = torch.randn(m, k), torch.randn(k, n)
        c = torch.empty(m, n)
        torch.mm(a, bm, out=c)
        reps, elapsed = 1, 0.0
        while elapsed < min_seconds:
            reps *= 4
            t = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, bm, out=c)
            elapsed = time.perf_counter() - t
        out.append(elapsed / reps)
    return out
