"""The VampPrior recipe on dynamically binarised MNIST (Tomczak & Welling 2018; issue 14).

Purpose: the rows `standard` and `vamp` of the likelihood-frontier table, with the recipe of the
authors' code (jmtomczak/vae_vampprior, `experiment.py` defaults) on this codebase's parts:

| variant | model | published test NLL |
| --- | --- | --- |
| `standard` | VAE, gated MLP 300-300 (`gated_mlp`), z = 40, N(0, I) prior | 84.45 +- 0.12 |
| `vamp` | the same with a VampPrior of 500 pseudo-inputs | 82.43 +- 0.06 |
| `hvae_vamp` | two-level HVAE, gated MLPs, z_1 = z_2 = 40, VampPrior on z_2 | 81.56 +- 0.09 |
| `convhvae_vamp` | its conv HVAE: gated convolutions (`gated_conv`) | 79.67 |
| `standard_iaf`, `vamp_iaf` | `standard`, `vamp` with two IAF steps (`iaf` posterior) | - |

(Published: the Exemplar-VAE table, Norouzi et al. 2020, for the first three; the VampPrior
paper's Table 2 for the conv HVAE.) The hierarchy (`model.hierarchy="vampprior"`):
q(z_2 | x) q(z_1 | x, z_2),
p(z_2) p(z_1 | z_2) p(x | z_1, z_2) with the VampPrior p(z_2) = 1/K sum_k q(z_2 | u_k).

Recipe, and where each row follows their code (jmtomczak/vae_vampprior: `experiment.py`,
`utils/load_data.py`, `models/*.py`) or differs from it:
- Data: 50,000 / 10,000 train / validation split of MNIST's training set. Theirs are images
  0-49,999 / 50,000-59,999; ours a fixed permutation drawn from data.seed. Training images are
  binarised dynamically at every step (both). The validation images are binarised once per run
  (ours: the same key at every validation pass; theirs: once with numpy seed 777) and the test
  images once at evaluation (ours: `evaluate`'s binarization_seed 0, recorded in eval.json;
  theirs: seed 777). All 10,000 test images, K = 5,000 importance samples (theirs too).
- Optimisation: batch 100; Adam, learning rate 5e-4; the KL weight warmed up linearly from 0
  to 1 over 100 epochs (50,000 steps); at most 2,000 epochs; early stopping after 50
  validation passes (one per epoch) without a better validation ELBO; the evaluated
  checkpoint is the best one on validation (`run.keep_best`, `evaluate --best`). As theirs.
- Initialisation: Kaiming normal for every layer (their `he_init`); the decoder's output bias
  at zero (theirs: PyTorch's default uniform); the pseudo-inputs N(0.05, 0.01^2), clipped to
  [0, 1] (their hardtanh(0, 1) of the same init).
- Networks: as theirs (gated layers of 300 units, z = 40, the HVAE's joint layers, the conv
  HVAE's gated convolutions), except: their log-variance heads are hardtanh(-6, 2), ours are
  linear; their conv encoder of x in q(z_1 | x, z_2) has 3x3 kernels throughout, as ours;
  the decoder's output layer of the conv HVAE is a 1x1 convolution (theirs too).

Commands (one workdir per variant; rerunning a command resumes it exactly, any number of
times; the evaluation touches the test set once):
    python -m vae_jax.main --config experiments/mnist_vampprior.py:<variant> \
        --workdir ../runs/vampprior/<variant> --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir ../runs/vampprior/<variant> --best \
        --num_importance_samples 5000
On a GPU, the same commands (the data go to the device as here); nothing else changes.

Status (2-core AMD EPYC CPU, no GPU): no row has run to the end. Measured training throughput,
each variant alone (1,000 steps after compilation; the conv HVAE 4 steps of 2 s), and what a
whole run costs at that rate:

| variant | images/s | one epoch (50,000) | 500 epochs | 2,000 epochs (the cap) |
| --- | --- | --- | --- | --- |
| `standard` | 20,400 | 2.5 s | 21 min | 1.4 h |
| `vamp` | 3,100 | 16 s | 2.2 h | 9.0 h |
| `hvae_vamp` | 2,800 | 18 s | 2.5 h | 9.9 h |
| `convhvae_vamp` | 50 | 17 min | 5.8 days | 23 days |

Run part of the way: `standard`, 809 epochs in 85 min (at low priority next to another job for
the first 70), stopped by the end of the session, before early stopping and before any test
evaluation. Validation ELBO (nats) by epoch: 10: -144.6, 50: -104.4, 100 (end of the warm-up):
-95.6, 200: -92.1, 400: -90.4, 600: -89.6, best -89.18 at epoch 776, still improving by about
0.2 nats per 100 epochs; active units 40 until epoch ~150, then falling to 25. Record:
experiments/results/mnist_vampprior_standard.json. The whole run (at most 2,000 epochs) fits
in 1.5 h here: rerun the command above from scratch on the next machine.

The VampPrior rows pay for 500 pseudo-inputs through the encoder at every step (five times the
batch of 100): `vamp` is 6.6x slower than `standard` with the same networks. The evaluation at
K = 5,000 on 10,000 images is 50 million encoder-decoder passes, each about a third of a training
step's cost per image: some 15 min for `standard` at the rate above (estimated, not measured).
"""

from vae_jax.config_defaults import default_config

_VAMP = {"model.prior": "vamp", "model.prior_components": 500}
# The VampPrior paper's two-level hierarchy (`model.hierarchy="vampprior"`), z_1 and z_2 of 40.
_HVAE = {**_VAMP, "model.hierarchy": "vampprior", "model.num_layers": 2,
         "model.upper_latent_dims": (40,)}
VARIANTS = {
    "standard": {"model.prior": "standard_normal"},
    "vamp": _VAMP,
    "hvae_vamp": _HVAE,
    # Their convHVAE: gated convolutions 32-32-64-64-6 (kernels 7, 3, 5, 3, 3; strides
    # 1, 2, 1, 2, 1) for q(z_2 | x), the same with 3x3 kernels for x in q(z_1 | x, z_2), and
    # four 64-channel gated convolutions at 28x28 in p(x | z_1, z_2).
    "convhvae_vamp": {**_HVAE, "model.encoder": "gated_conv", "model.decoder": "gated_conv",
                      "model.features": (32, 32, 64, 64, 6),
                      "model.conv_kernel_sizes": (7, 3, 5, 3, 3),
                      "model.conv_strides": (1, 2, 1, 2, 1),
                      "model.decoder_features": (64, 64, 64, 64),
                      # One step per compiled program: on the CPU a lax.scan of 2 steps of this
                      # model did not finish 4 steps in 4 min, one step per dispatch takes 2 s.
                      "run.steps_per_dispatch": 1},
    # What a normalising-flow posterior adds (issue 14): the rows above with two IAF steps
    # (Kingma et al. 2016; MADE networks with the encoder's context, `posteriors.IAF`). With a
    # VampPrior the mixture's components are the flow's base Gaussians at the pseudo-inputs.
    "standard_iaf": {"model.prior": "standard_normal", "model.posterior": "iaf"},
    "vamp_iaf": {**_VAMP, "model.posterior": "iaf"},
}

STEPS_PER_EPOCH = 500  # 50,000 training images in batches of 100


def get_config(variant: str = "vamp"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    config = default_config()
    config.data.name = "mnist"
    config.data.validation_size = 10_000
    config.data.binarization = "dynamic"
    m = config.model
    m.encoder = m.decoder = "gated_mlp"
    m.hidden = (300, 300)
    m.latent_dim = 40
    m.kernel_init = "kaiming_normal"
    m.likelihood = "bernoulli"
    o = config.objective
    o.kl_schedule = "linear"
    o.kl_warmup_steps = 100 * STEPS_PER_EPOCH
    config.optim.name = "adam"
    config.optim.learning_rate = 5e-4
    run = config.run
    run.batch_size = 100
    run.eval_batch_size = 1000
    run.num_epochs = 2000
    run.num_steps = 0
    run.steps_per_dispatch = 100
    run.log_every = STEPS_PER_EPOCH
    run.eval_every = STEPS_PER_EPOCH
    run.checkpoint_every = 5 * STEPS_PER_EPOCH
    run.keep_best = True
    run.early_stopping_patience = 50
    for dotted, value in VARIANTS[variant].items():
        group, field = dotted.split(".")
        config[group][field] = value
    return config
