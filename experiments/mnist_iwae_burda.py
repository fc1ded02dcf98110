"""The IWAE of Burda, Grosse & Salakhutdinov (2015), "Importance Weighted Autoencoders", Table 1.

Purpose: the IWAE rows of Table 1: the models, data, optimiser and schedule of
`experiments/mnist_vae_burda.py` (see there), trained on the importance-weighted bound L_K
(`objective.name="iwae"`, `objective.num_samples=K`). Variants "<layers>_k<K>": "1layer_k5",
"1layer_k50", "2layer_k5", "2layer_k50", and the same with "_short" (the 985-epoch schedule of
`mnist_vae_burda.py`, every stage at 0.3x).

Command (full schedule, 3,280 epochs; add --config.run.num_epochs=N for a shorter run):
    python -m vae_jax.main --config experiments/mnist_iwae_burda.py:2layer_k50 \
        --workdir runs/iwae_burda_2layer_k50 --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir runs/iwae_burda_2layer_k50   # K = 5000, test set

Published test NLLs (Burda et al. 2015, Table 1, K = 5000, 3,280 epochs): 1 layer, k = 50:
84.78 nats; 2 layers, k = 50: 82.90 nats (Table 1 also lists k = 5).

Hardware and time: an IWAE step does k decoder passes per example, so it costs up to k times a VAE
step (see `mnist_vae_burda.py` for the VAE's rates and the full schedule's length). Measured here
(2-core AMD EPYC CPU, no GPU; seed 0) on a still shorter schedule,
`--config.optim.burda_epoch_scale=0.05 --config.run.num_epochs=165` (stages of 1, 1, 1, 1, 4, 12,
36, 109 epochs; a k = 50 step costs ~9x a VAE step here, so this is the same order of compute as the
VAE's 985 epochs), evaluated at K = 5000 on all 10,000 test images:

    python -m vae_jax.main --config experiments/mnist_iwae_burda.py:2layer_k5 \
        --workdir runs/iwae_2layer_k5_x0.05 --config.optim.burda_epoch_scale=0.05 \
        --config.run.num_epochs=165 --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir runs/iwae_2layer_k5_x0.05

    variant     bias   wall time  val ELBO  test ELBO  test NLL (K=5000)  L_5     L_50    active
    1layer_k5   data   16 min     -97.81    -96.81     89.22 +- 0.23      -92.70  -90.59  23/50
    2layer_k5   data   27 min     -95.07    -94.23     87.27 +- 0.23      -90.68  -88.57  109/150
    1layer_k50  zeros  93 min     -101.4    -100.68    88.37 +- 0.23      -93.62  -90.28  36/50
    2layer_k50  zeros  138 min    -99.64    -98.73     87.48 +- 0.24      -92.55  -89.40  104/150

The k = 50 rows were trained before the data-mean output bias became part of these configs; they
reproduce with `--config.model.decoder_bias_init=zeros` added to the command. Wall times are with
other jobs sharing the two cores: 1layer_k5 ran next to the two-layer VAE, 2layer_k5 next to the
test suite and another training run; 1layer_k50 ran at 1.0-2.1k images/s with one to three other
runs (alone about 3.8k images/s, 40 minutes for the 165 epochs), 2layer_k50 at 0.7-2.4k (alone about
2.3k, 66 minutes). The output bias helps the IWAE too: on the same schedule the two-layer model with
k = 5 and the data-mean bias (87.27) ends ahead of k = 50 with zeros (87.48).

Not comparable with the paper (issue 14's `2layer_k50` row, target <= 83.40 against the
published 82.90): the k = 50 rows above ran 0.05x of the schedule (165 of 3,280 epochs) and
without the data-mean output bias that these configs now start from, so 87.48 says nothing
about whether this code reaches 82.90. The comparable run is the full schedule with the bias,
which is what the command at the top does:

    python -m vae_jax.main --config experiments/mnist_iwae_burda.py:2layer_k50 \
        --workdir ../runs/iwae_burda_2layer_k50 --config.data.data_dir=../shared/data/tfds
    python -m vae_jax.evaluate --workdir ../runs/iwae_burda_2layer_k50

At the measured 2,300 images/s alone (above) it is about 22 h of training here (20 x the 66 min
of the 0.05x run), and it resumes exactly whenever the command is rerun; not run yet.

The paper's numbers need its full schedule (3,280 epochs; about 13 h alone here for
1layer_k50): these runs are 0.05x of it, against 0.3x for the VAE rows of `mnist_vae_burda.py`
(87.29 and 85.62). The control is the one-layer VAE on this same 0.05x schedule
(`mnist_vae_burda.py:1layer` with the two flags above; 11 min, shared): test NLL
90.27 +- 0.24, ELBO -95.15, 22 of 50 units active. The short schedule costs the VAE 3.0 nats
against its 985-epoch run. At equal schedules k = 5 is 1.05 nats better than the VAE (both
with the data-mean bias), and k = 50 is 1.9 nats better even without the bias (paper:
86.76 - 84.78 = 2.0). The k = 50 bound also keeps more units active (36 of 50 against the
VAE's 22) and ends with a worse ELBO at a better NLL (ELBO -100.7 at 88.37 nats against -95.15
at 90.27), because it trades the ELBO for the likelihood (Burda et al., section 5.2).
("bias": the decoder's initial output bias, `model.decoder_bias_init`.)
"""

import pathlib

from vae_jax.provenance import load_experiment

mnist_vae_burda = load_experiment(pathlib.Path(__file__).with_name("mnist_vae_burda.py"))

VARIANTS = tuple(f"{layers}_k{k}{length}" for length in ("", "_short")
                 for layers in ("1layer", "2layer") for k in (5, 50))


def get_config(variant: str = "1layer_k50"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    layers, k = variant.removesuffix("_short").split("_k")
    scale = mnist_vae_burda.SHORT_EPOCH_SCALE if variant.endswith("_short") else 1.0
    config = mnist_vae_burda.burda_config(layers, scale)
    config.objective.name = "iwae"
    config.objective.num_samples = int(k)
    return config
