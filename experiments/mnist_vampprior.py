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
| `standard_ema`, `vamp_ema`, `hvae_vamp_ema` | the same, validated and tested with an EMA | - |

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
  linear (`--config.model.logvar_range="(-6.0, 2.0)"` gives theirs; no row here used it
  yet); their conv encoder of x in q(z_1 | x, z_2) has 3x3 kernels throughout, as ours;
  the decoder's output layer of the conv HVAE is a 1x1 convolution (theirs too).

Commands (one workdir per variant; rerunning a command resumes it exactly, any number of
times; the evaluation touches the test set once):
    python -m vae_jax.main --config experiments/mnist_vampprior.py:<variant> \
        --workdir ../runs/vampprior/<variant> --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir ../runs/vampprior/<variant> --best \
        --num_importance_samples 5000
On a GPU, the same commands (the data go to the device as here); nothing else changes.

Results (dynamically binarised MNIST, all 10,000 test images binarised once with seed 0,
K = 5,000, the checkpoint best on validation; 2-core AMD EPYC CPU; records in
experiments/results/mnist_vampprior_<variant>.json, written by experiments/record_result.py):

| variant | test NLL | published (target: <=) | ELBO | L_50 | epochs (best) | train, eval |
| --- | --- | --- | --- | --- | --- | --- |
| `standard` | 84.52 +- 0.22 | 84.45 +- 0.12 | -88.62 | -85.30 | 1103 (1053) | 2.3 h, 6 min |
| `standard_iaf` | 83.54 +- 0.22 | - | -87.28 | -84.24 | 862 (812) | 48 min, 6 min |
| `standard_ema` | 84.18 +- 0.22 | 84.45 +- 0.12 | -87.51 | -84.81 | 1235 (1185) | 1.05 h, 6 min |
| `vamp` | 82.49 +- 0.22 | 82.43 +- 0.06 | -86.01 | -83.14 | 1291 (1241) | 7.7 h, 10 min |

`standard` stopped early at epoch 1,103 (50 epochs without a better validation ELBO than
-88.94 at epoch 1,053). Its NLL is 0.07 nats above the published mean, within one standard
error of ours (0.22) and of theirs (0.12): a match, not a win. Validation ELBO (nats) by epoch:
10: -144.6, 50: -104.4, 100 (end of the warm-up): -95.6, 200: -92.1, 400: -90.4, 600: -89.6,
800: -89.2, 1,000: -89.1, best -88.94 at 1,053; active units 40 until epoch ~150, then 34 at
200, 26 at 600, 24 at the end. What might close the last 0.07: their hardtanh(-6, 2)
log-variance heads (ours are linear), their split (images 0-49,999 / 50,000-59,999; ours a
permutation) and test binarisation (numpy seed 777; ours JAX seed 0); one seed each, so the
difference is within the noise of a rerun. It trained in two sessions (the first stopped by the
session's end at epoch 809, the second resumed from its last checkpoint).

What a flow posterior adds: `standard_iaf` (two IAF steps, everything else as `standard`)
gains 0.98 nats of test NLL (83.54 against 84.52, the same 10,000 binarised test images) and
1.34 nats of test ELBO, and keeps 28 units active against 24. On validation it led at every
epoch from the end of the warm-up: by 1.3 nats at epoch 100, 0.9 at 200, 1.3-1.6 from 400 to
the end. It stopped earlier (best at epoch 812) and beats the published plain VAE (84.45) by
0.9 nats.

The other rows have not run to the end here. Training throughput of each variant alone
(vae_jax.main, 1,500 steps: the 2nd and 3rd window of 500 steps, no validation pass; the conv
HVAE 4 steps of 2 s), and what a whole run costs at that rate:

| variant | images/s | one epoch (50,000) | 500 epochs | 2,000 epochs (the cap) |
| --- | --- | --- | --- | --- |
| `standard` | 20,200 | 2.5 s | 21 min | 1.4 h |
| `vamp` | 5,000 | 10 s | 1.4 h | 5.6 h |
| `hvae_vamp` | 4,070 | 12 s | 1.7 h | 6.8 h |
| `convhvae_vamp` | 50 | 17 min | 5.8 days | 23 days |
| `standard_iaf` | 18,000 | 2.8 s | 23 min | 1.5 h |
| `vamp_iaf` | 5,200 | 9.6 s | 1.3 h | 5.3 h |

`vamp` stopped early at epoch 1,291 (50 epochs without a better validation ELBO than -86.28
at epoch 1,241). Its NLL is 0.06 nats above the published mean, within one standard error of
ours (0.22): a match, not a win, like `standard`. It beats `standard` by 2.03 nats (the same
10,000 binarised test images). It trained over three sessions, resumed each time by rerunning
its command (7.7 h of wall time, paused or sharing the cores for part of it; about 350 epochs
an hour alone). Validation ELBO by epoch: 100: -91.22, 200: -89.17, 300: -88.12, 400: -87.61,
500: -87.31, 600: -87.06, 700: -86.89, 800: -86.78, 900: -86.61, 1,000: -86.51, 1,100: -86.44,
1,200: -86.38, best -86.28 at 1,241 (`standard`: -95.6 at 100, -92.1 at 200, -90.4 at 400,
-89.6 at 600); 27 units active from epoch 900.

What an EMA of the parameters adds: `standard_ema` trains through `standard`'s parameters bit
for bit (the same seed; the training losses agree at all 1,103 logged steps) and validates and
tests an exponential moving average of them (decay 0.9995, about 4 epochs). Its validation
ELBO was better at every epoch after the warm-up: by 1.34 nats at epoch 100, 1.35 at 200, 1.32 at
400, 1.17 at 600, 1.09 at 800, 1.16 at 1,000; -87.81 at its best (epoch 1,185) against
`standard`'s -88.94, which the EMA passed at epoch 432. On the test set (the same 10,000
binarised images) it gains 0.34 nats of NLL (84.18 against 84.52) and 1.11 nats of ELBO
(-87.51 against -88.62): the averaged encoder gains more than the averaged decoder. 84.18
beats the published 84.45 by 0.27 nats, more than our standard error (0.22) and twice theirs
(0.12). With Adam at a constant learning rate of 5e-4 the last iterate carries the optimiser's
noise; the published recipe evaluates the last iterate.

Next on this CPU: `hvae_vamp_ema`. It trained on 2026-12-07 to epoch 851.6 (step 425,800;
record mnist_vampprior_hvae_vamp_ema.json, unfinished; 3,320 images/s median alone on an AMD
EPYC, about 240 epochs an hour with the validation pass), then to epoch 910, and its workdir
went with that machine. On 2026-12-08 its command started it again from step 0 on an Intel
Xeon (4,300-4,800 images/s alone, about 320 epochs an hour) in ../runs/vampprior/hvae_vamp_ema,
and it retraced the record: its validation ELBO equals the record's, to the 3 decimals
recorded, at all 72 epochs the record holds up to epoch 630. By 02:36 UTC it had
reached epoch 631 (best -84.70 at 592); rerunning the command resumes it.
Validation ELBO by epoch: 100: -89.55, 200: -86.76, 300: -85.74, 400: -85.22, 500: -84.89,
600: -84.69, 700: -84.53, 800: -84.43, best -84.36 at 851 (`vamp`: -91.22, -89.17, -88.12,
-87.61, -87.31, -87.06, -86.89, -86.78, -86.72; its best after 1,241 epochs was -86.28); 49
units active of 80. A validation probe at step 423,000 (`evaluate --split validation
--max_examples 2000 --num_importance_samples 1000`, the first 2,000 validation images): NLL
81.83, 1.14 +- 0.06 nats below `vamp`'s best checkpoint on the same images (82.97; paired,
`experiments/compare_evaluations.py`), whose test NLL is 82.49; the EMA gains 0.34 +- 0.02 nats
of it over the run's own iterate at that step (82.17). When it ends (early stopping or the
cap), its evaluation (about 25-30 min here: the probe's 73 s for 2,000 images at K = 1,000,
times 25; an interrupted one continues when rerun) and `record_result.py`; as a paired
control, the same checkpoint's iterate (`--parameters iterate --out <workdir>/eval_iterate`,
then `compare_evaluations.py`). Then `vamp_ema`. `hvae_vamp` (the recipe without the EMA;
the same iterates) reached epoch 73 on 2026-12-07, and its workdir is gone too: its command
starts it again. The curves of all recorded rows:
experiments/results/mnist_vampprior_curves.png (`experiments/results_figure.py`).
The VampPrior rows pay for 500 pseudo-inputs through the encoder at every step (five
times the batch of 100): 10.5 ms of `vamp`'s 24 ms gradient, against 4.9 ms for all of
`standard`'s. Its mixture's [N, 500] component table is two matmuls
(`fastpath.gaussian_log_density_table`, benchmarks/README.md): before that, `vamp` trained at
3,100 images/s. The conv HVAE needs a GPU: its four 64-channel gated convolutions at 28 x 28
are some 140 GFLOP per step of 100 images, forward and backward.

`convhvae_vamp` ran 4 epochs here to measure the start of its curve (2026-12-07 17:46-19:09
UTC, 40-43 images/s beside `hvae_vamp_ema` at nice 19; 17-20 min per epoch with the
validation pass; paused by SIGTERM at step 2,023; that workdir went with its machine, and
the command starts the run again). Validation ELBO at epochs 1-4: -242.21, -216.78, -207.44, -197.31
(`hvae_vamp`, the MLP hierarchy, on the same schedule: -267.81, -221.31, -204.57, -191.87);
its reconstruction term: 49.74, 40.39, 32.83, 28.90 (`hvae_vamp`: 61.24, 46.76, 41.64,
39.38). In the warm-up, where the KL weight rises from 0 to 0.04, the conv decoder
reconstructs 10 nats better and spends more KL (168 against 152 nats at epoch 4): nothing yet
says where it ends. Record: experiments/results/mnist_vampprior_convhvae_vamp.json
(unfinished). What finishes it: the same command on a GPU, up to 2,000 epochs (10^6 steps of
100 images, some 1.4e17 FLOP at the 140 GFLOP per step above; no GPU was lent to measure its
rate), then the evaluation command above.
"""

from vae_jax.config_defaults import default_config

_VAMP = {"model.prior": "vamp", "model.prior_components": 500}
_EMA = {"optim.ema_decay": 0.9995}  # a window of about 2,000 steps (4 epochs)
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
    # The rows validated and evaluated with an exponential moving average of their parameters
    # (Polyak averaging; PixelCNN++, Salimans et al. 2017, evaluates with the same decay,
    # openai/pixel-cnn's polyak_decay = 0.9995): with Adam at a constant learning rate the
    # last iterate carries the optimiser's noise, the average less.
    # Nothing else changes: with the same seed, training follows the same iterates.
    "standard_ema": {"model.prior": "standard_normal", **_EMA},
    "vamp_ema": {**_VAMP, **_EMA},
    "hvae_vamp_ema": {**_HVAE, **_EMA},
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
