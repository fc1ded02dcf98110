"""The full set of config fields, with defaults; experiment files override what they need.

Every field the training loop reads is declared here, so `--config.<group>.<field>=...`
overrides work for any experiment and a typo is an error (ml_collections refuses unknown
fields). Five groups:

    data       which data set and how its pixels are presented
    model      the networks, the likelihood, the prior, the posterior family, the layers
    objective  what is minimised (by name) and its weights and schedules
    optim      the optax optimiser (by name), its learning-rate schedule and guards
    run        batch sizes, length, and how often to log, evaluate and checkpoint
"""

import json

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """Defaults: an MLP VAE with a Bernoulli likelihood on dynamically binarised data."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"  # "digits", "sprites" (embedded), "mnist", any TFDS name
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.download = False  # True lets TFDS download on a machine with internet
    config.data.validation_size = 0.1  # a fraction of train, or a count of examples
    config.data.binarization = "dynamic"  # "dynamic" (every step), "static" (once), "none"
    # True: train on y = (k + u) / num_levels, u ~ U[0, 1) redrawn every step, instead of
    # k / (num_levels - 1) (`input_pipeline.uniform_dequantize`), so a density likelihood
    # ("gaussian", "gaussian_learned", "continuous_bernoulli") bounds bits/dim of the levels.
    config.data.dequantize = False
    config.data.seed = 0  # validation split and static binarisation
    config.data.max_device_bytes = 2**30  # larger training sets are streamed with tf.data

    # Model (`vae_jax.model.build_model`): parts by name.
    m = config.model = ml_collections.ConfigDict()
    # "mlp", "gated_mlp", "conv" or "gated_conv" (`models.ENCODERS`): net of q(z_1 | x)
    m.encoder = "mlp"
    # "mlp", "gated_mlp", "conv" (`models.DECODERS`) or "gated_conv" (`models.SkipDecoder`)
    m.decoder = "mlp"
    m.latent_dim = 16  # Z_1
    # Stochastic layers of the Burda et al. 2015 type: x -> z_1 -> ... -> z_L. Layer l > 1 has
    # upper_latent_dims[l - 2] units (default: half the layer below, at least 1), and the MLPs
    # of q(z_l | z_{l-1}) and p(z_{l-1} | z_l) have upper_hidden[l - 2] hidden widths (default:
    # two layers of 2 Z_l, Burda et al.'s 100-100 for Z_2 = 50).
    m.num_layers = 1
    m.upper_latent_dims = ()
    m.upper_hidden = ()
    # "burda": the layers above; "vampprior": Tomczak & Welling's (2018) top-down hierarchy,
    # q(z_L | x) q(z_l | x, z_{l+1}), p(z_l | z_{l+1}), p(x | z_1..z_L) (`model.VAE`), whose
    # q and p(z_l | z_{l+1}) networks take their widths from `hidden` (`model.build_model`).
    m.hierarchy = "burda"
    m.hidden = (512, 512)  # MLP hidden layers of q(z_1 | x) (p(x | z_1) mirrors them)
    m.features = (32, 64)  # conv encoder channels (the decoder mirrors them)
    m.kernel_size = 3
    # one per conv encoder layer (the VampPrior code's 7, 3, 5, 3, 3 and 1, 2, 1, 2, 1), or ():
    # kernel_size and strides for every layer
    m.conv_kernel_sizes = ()
    m.conv_strides = ()
    # "gated_conv" decoder: stride-1 gated convolutions at the image's resolution
    m.decoder_features = (64, 64, 64, 64)
    m.strides = 2
    m.conv_hidden = ()  # dense layers between the conv stack and the latent heads
    m.activation = "relu"
    m.kernel_init = "kaiming_normal"  # or "lecun_normal", "kaiming_uniform", ...
    # (lo, hi): every Gaussian log-variance head (posteriors, and p(z_l | z_l+1) of a
    # hierarchy) is hardtanh(lo, hi), as the VampPrior code's (-6.0, 2.0); (): linear heads.
    m.logvar_range = ()
    # "data_mean": the decoder's output bias starts at the training set's pixel means (logits
    # for Bernoulli; `likelihoods.data_mean_output_bias`), as in Burda et al.'s code; MLP
    # decoders.
    m.decoder_bias_init = "zeros"
    m.likelihood = "bernoulli"  # `likelihoods.LIKELIHOODS`
    m.gaussian_logvar = 0.0  # fixed log-variance of the "gaussian" likelihood
    # True lets likelihood="bernoulli" train on grey levels (data.binarization="none" on data
    # with more than 2 levels): a cross-entropy loss but not a likelihood, so its ELBO and
    # bits/dim mean nothing (pytorch/examples#460). Refused unless set; metrics rows then carry
    # normalised_likelihood=0.
    m.allow_grey_level_bernoulli = False
    m.prior = "standard_normal"  # `priors.PRIORS`: "standard_normal", "mixture", "vamp"
    m.prior_components = 0  # mixture components / VampPrior pseudo-inputs; 0: the prior's default
    m.posterior = "diagonal"  # `posteriors.POSTERIORS`: "diagonal", "full_covariance", "iaf"
    m.iaf_steps = 2  # "iaf": flow steps T
    m.iaf_hidden = ()  # "iaf": MADE hidden widths; (): the posterior's default
    m.iaf_context_dim = 0  # "iaf": context units from the encoder; 0: the posterior's default

    # Objective (`vae_jax.objectives.OBJECTIVES`), by name.
    o = config.objective = ml_collections.ConfigDict()
    o.name = "elbo"  # "elbo", "iwae", "capacity", "beta_tc", "dip_vae_i", "dip_vae_ii",
    #                  "info_vae_mmd", "factor_vae"
    o.num_samples = 1  # latent samples per example (K for IWAE)
    o.beta = 1.0  # the KL weight the schedule reaches (beta_tc: the weight of the TC term)
    o.kl_schedule = "constant"  # "constant", "linear" (warm-up), "cyclical"
    o.kl_warmup_steps = 0
    o.kl_cycle_steps = 0
    o.kl_cycle_ratio = 0.5
    o.kl_num_cycles = 0  # 0: cycle for the whole run
    o.free_bits = 0.0  # nats per latent dimension; 0 disables (needs a per-dimension KL)
    o.capacity_max = 25.0  # "capacity": C rises to this many nats ...
    o.capacity_steps = 100000  # ... over this many steps (Burgess et al. 2018)
    o.capacity_gamma = 1000.0  # "capacity": the weight of |KL - C|
    o.tc_estimator = "mws"  # "beta_tc": "mws" or "mss" (Chen et al. 2018)
    o.dip_lambda_od = 10.0  # "dip_vae_*": off-diagonal weight (Kumar et al. 2018)
    o.dip_lambda_d = 0.0  # diagonal weight; 0: 10 lambda_od for dip_vae_i, lambda_od for _ii
    o.mmd_kernel = "rbf"  # "info_vae_mmd": "rbf" or "imq"
    o.info_alpha = 0.0  # InfoVAE (Zhao et al. 2017): recon + (1 - alpha) KL
    o.info_lambda = 1000.0  # ... + (alpha + lambda - 1) MMD(q(z), p(z))
    # "factor_vae" (Kim & Mnih 2018): recon + beta KL + factor_gamma TC, the TC from a
    # discriminator (leaky-ReLU MLP of discriminator_hidden) trained by its own Adam.
    o.factor_gamma = 30.0
    o.discriminator_hidden = (1000, 1000, 1000, 1000, 1000, 1000)
    o.discriminator_learning_rate = 1e-4
    o.discriminator_b1 = 0.5
    o.discriminator_b2 = 0.9

    # Optimisation: any optax optimiser by name with the arguments below that it takes.
    p = config.optim = ml_collections.ConfigDict()
    p.name = "adam"  # "adam" (vae_jax's fast Adam on CPU), "adamw", "adamax", "lion", "sgd",
    #                  or any other optax optimiser that takes a learning rate
    p.learning_rate = 1e-3
    p.lr_schedule = "constant"  # "constant", "cosine", "warmup_cosine", "burda"
    # ("burda": 3^i epochs at learning_rate * 10^(-i/7) for i = 0 .. 7, Burda et al. 2015)
    p.burda_epoch_scale = 1.0  # "burda" only: stage i lasts round(scale * 3^i) epochs
    p.lr_warmup_steps = 0
    p.b1 = 0.9  # adam, adamw, adamax, lion, ...
    p.b2 = 0.999
    p.eps = 1e-8  # Burda et al. 2015 use 1e-4
    p.weight_decay = 0.0  # adamw, lion, ...
    p.momentum = 0.0  # sgd (0: none)
    p.nesterov = False  # sgd
    p.grad_clip_norm = 0.0  # 0 disables
    p.max_consecutive_skips = 10  # non-finite updates in a row before the run stops
    p.ema_decay = 0.0  # > 0 keeps an EMA of the parameters, used for evaluation

    # Schedule of the run.
    r = config.run = ml_collections.ConfigDict()
    r.batch_size = 128  # global: split across all devices
    r.eval_batch_size = 256
    r.num_steps = 0  # 0: num_epochs epochs
    r.num_epochs = 10
    r.steps_per_dispatch = 1  # steps per jitted lax.scan; >1 pays for small MLPs
    r.log_every = 100
    r.eval_every = 1000
    r.checkpoint_every = 1000
    r.keep_checkpoints = 3
    # Model selection on the validation split (`train.BestOnValidation`): keep_best keeps the
    # TrainState of the best validation pass by best_metric (best_mode "max" or "min") in
    # <workdir>/best/ (`python -m vae_jax.evaluate --best` evaluates it); with
    # early_stopping_patience = P > 0 training stops after P validation passes without a
    # better one (and keeps the best).
    r.keep_best = False
    r.best_metric = "val_elbo_nats"
    r.best_mode = "max"
    r.early_stopping_patience = 0
    r.num_image_examples = 16
    # True: the CPU fast paths of `vae_jax.fastpath` on the CPU backend (they measured faster
    # there); False: plain jax.random / jax.nn / optax everywhere.
    r.cpu_fast_paths = True
    return config


def with_defaults(stored: dict) -> dict:
    """A config.json's dict with every field it lacks set to its default: a run recorded
    before a field existed trained with the field's default (the field is new, not changed)."""
    stored = {name: dict(value) if isinstance(value, dict) else value
              for name, value in stored.items()}
    for name, value in json.loads(default_config().to_json()).items():
        stored.setdefault(name, value)
        if isinstance(value, dict) and isinstance(stored[name], dict):
            for field, default in value.items():
                stored[name].setdefault(field, default)
    return stored
