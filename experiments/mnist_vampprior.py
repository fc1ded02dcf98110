"""The VampPrior recipe on dynamically binarised MNIST (Tomczak & Welling 2018; issue 14).

Purpose: the rows `standard` and `vamp` of the likelihood-frontier table, with the recipe of the
authors' code (jmtomczak/vae_vampprior, `experiment.py` defaults) on this codebase's parts:

| variant | model | published test NLL |
| --- | --- | --- |
| `standard` | VAE, gated MLP 300-300 (`gated_mlp`), z = 40, N(0, I) prior | 84.45 +- 0.12 |
| `vamp` | the same with a VampPrior of 500 pseudo-inputs | 82.43 +- 0.06 |
| `hvae_vamp` | two-level HVAE, gated MLPs, z_1 = z_2 = 40, VampPrior on z_2 | 81.56 +- 0.09 |
| `convhvae_vamp` | its conv HVAE: gated convolutions (`gated_conv`) | 79.67 |

(Published: the Exemplar-VAE table, Norouzi et al. 2020, for the first three; the VampPrior
paper's Table 2 for the conv HVAE.) The hierarchy (`model.hierarchy="vampprior"`):
q(z_2 | x) q(z_1 | x, z_2),
p(z_2) p(z_1 | z_2) p(x | z_1, z_2) with the VampPrior p(z_2) = 1/K sum_k q(z_2 | u_k).

Recipe: 50,000 / 10,000 train / validation split of MNIST's training set (the validation
images are a fixed permutation's tail, drawn from data.seed; theirs are the last 10,000);
dynamic binarisation of the training images at every step, the test set binarised once with
seed 0 at evaluation (their code also binarises dynamically; the published protocol evaluates
on dynamically binarised test images); batch 100; Adam with learning rate 5e-4; the KL weight
warmed up linearly from 0 to 1 over 100 epochs (50,000 steps); up to 2,000 epochs with early
stopping after 50 validation passes (one per epoch) without a better validation ELBO; the
evaluated checkpoint is the best one on validation (`run.keep_best`,
`python -m vae_jax.evaluate --best`). Initialisation: Kaiming normal (their `he_init`), the
decoder's output bias at zero (theirs is PyTorch's default uniform).

Commands (one workdir per variant; rerunning a command resumes it, any number of times):
    python -m vae_jax.main --config experiments/mnist_vampprior.py:vamp \
        --workdir ../runs/vampprior/vamp --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir ../runs/vampprior/vamp --best \
        --num_importance_samples 5000

Not run to the end yet: these runs take days on a 2-core CPU (2,000 epochs at most; the
published runs stopped early after several hundred). The two-level HVAE rows of the table
need the VampPrior paper's hierarchy (q(z2 | x), q(z1 | x, z2), p(z1 | z2), p(x | z1, z2)),
which the Burda-type `model.num_layers` hierarchy is not; they are not here yet.
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
                      "model.decoder_features": (64, 64, 64, 64)},
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
