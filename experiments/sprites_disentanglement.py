"""Disentanglement on the procedural sprites: beta-VAE, beta-TCVAE, FactorVAE and DIP-VAE-II.

Purpose: the models of Locatello et al. 2019's study on data whose five factors are known
(`vae_jax.ground_truth.Sprites`: shape, scale, orientation, x and y position; 64 x 64 binary
images rendered on demand), scored with every metric of `vae_jax.disentanglement` by
`python -m vae_jax.evaluate --disentanglement`. The network, latent size, batch and optimiser
are disentanglement_lib's (its `conv_encoder` / `deconv_decoder`: four 4x4 stride-2
convolutions of 32, 32, 64, 64 channels, a dense layer of 256, 10 latents; Bernoulli
likelihood; Adam 1e-4, batch 64); only the objective differs between variants:

| variant | objective | setting |
| --- | --- | --- |
| `beta_vae_1` | `elbo` | beta = 1 (the plain VAE) |
| `beta_vae_4` | `elbo` | beta = 4 |
| `beta_vae_16` | `elbo` | beta = 16 |
| `beta_tcvae_6` | `beta_tc` | beta = 6 on the total correlation (minibatch weighted sampling) |
| `factor_vae_30` | `factor_vae` | gamma = 30 (discriminator: 6 x 1000 leaky ReLU, Adam 1e-4) |
| `dip_vae_ii` | `dip_vae_ii` | lambda_od = lambda_d = 10 |

Commands (one workdir per variant and seed; rerunning a command resumes it):
    python -m vae_jax.main --config experiments/sprites_disentanglement.py:factor_vae_30 \
        --workdir ../runs/sprites/factor_vae_30_seed0 --config.seed=0
    python -m vae_jax.evaluate --workdir ../runs/sprites/factor_vae_30_seed0 --disentanglement \
        --batch_size 10 --num_importance_samples 100 --max_examples 1000

(`--batch_size 10`: every example's K importance samples are K decoder passes of a 64 x 64
image, so the default batch of `run.eval_batch_size` examples would not fit in memory.)

`python experiments/sprites_sweep.py` runs every variant with seeds 0, 1, 2 in turn (each run
resumes where it stopped), evaluates them and writes the table and the figure.

Measured (AMD EPYC, 2 cores, commits ce967dc to 55f9113; 1,000 steps per run at 270-510
images/s (sharing the cores), 2.5-4.5 minutes of training each; seeds 0, 1 and 2; metrics on
500 training and 250 held-out points, `python experiments/sprites_sweep.py
--runs_dir ../runs/sprites --disentanglement_num_train 500 --disentanglement_num_eval 250
--num_importance_samples 10 --nll_examples 500`, about 110 min for the 18 runs; records in
experiments/results/sprites_sweep.json), median (range):

model               MIG               DCI disent.       FactorVAE score (eval)
beta_vae_1          0.02 (0.02-0.03)  0.03 (0.03-0.03)  0.48 (0.41-0.57)
beta_vae_4          0.02 (0.02-0.02)  0.02 (0.01-0.03)  0.47 (0.37-0.55)
beta_vae_16         0.05 (0.02-0.06)  0.04 (0.01-0.04)  0.57 (0.42-0.63)
beta_tcvae_6        0.02 (0.01-0.02)  0.02 (0.02-0.03)  0.52 (0.47-0.52)
factor_vae_30       0.06 (0.03-0.14)  0.04 (0.03-0.08)  0.70 (0.46-0.75)
dip_vae_ii          0.03 (0.01-0.05)  0.02 (0.02-0.03)  0.41 (0.37-0.59)

(every metric: the README's "Disentanglement" table.)

No model wins on every metric or in every seed. FactorVAE has the best median MIG and
FactorVAE score, with the widest ranges (its seed 1 is the sweep's best run, its seed 2 scores
like a plain VAE); explicitness and DCI informativeness do not separate the models; the seed
spread is as large as the differences between models (README, "Disentanglement").
"""

from vae_jax.config_defaults import default_config

VARIANTS = {
    "beta_vae_1": {"objective.name": "elbo", "objective.beta": 1.0},
    "beta_vae_4": {"objective.name": "elbo", "objective.beta": 4.0},
    "beta_vae_16": {"objective.name": "elbo", "objective.beta": 16.0},
    "beta_tcvae_6": {"objective.name": "beta_tc", "objective.beta": 6.0},
    "factor_vae_30": {"objective.name": "factor_vae", "objective.factor_gamma": 30.0},
    "dip_vae_ii": {"objective.name": "dip_vae_ii", "objective.dip_lambda_od": 10.0,
                   "objective.dip_lambda_d": 10.0},
}


def get_config(variant: str = "factor_vae_30"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    config = default_config()
    config.data.name = "sprites"
    config.data.binarization = "none"  # the images are binary already
    config.data.validation_size = 5000
    m = config.model
    m.encoder = m.decoder = "conv"
    m.features = (32, 32, 64, 64)
    m.kernel_size = 4
    m.strides = 2
    m.conv_hidden = (256,)
    m.latent_dim = 10
    m.likelihood = "bernoulli"
    config.optim.learning_rate = 1e-4
    run = config.run
    run.batch_size = 64
    run.eval_batch_size = 500
    run.num_epochs = 0
    run.num_steps = 1000  # what a 2-core CPU affords for 18 runs (see the runbook)
    run.steps_per_dispatch = 1
    run.log_every = 100
    run.eval_every = 500
    run.checkpoint_every = 500
    for dotted, value in VARIANTS[variant].items():
        group, field = dotted.split(".")
        config[group][field] = value
    return config
