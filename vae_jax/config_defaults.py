"""The full set of config fields, with defaults; experiment files override what they need.

Every field the training loop reads is here, so `--config.<field>=...` overrides work for any
experiment and a typo is an error (ml_collections refuses unknown fields).
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """Defaults: an MLP VAE with a Bernoulli likelihood on dynamically binarised data."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"  # "digits" (embedded), "mnist", "fashion_mnist", any TFDS name
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

    # Model (`vae_jax.models`): modules by name.
    config.encoder = "mlp"  # "mlp", "conv", or "mlp2" (two stochastic layers)
    config.decoder = "mlp"  # the same name as the encoder for "mlp2"
    config.latent_dim = 16
    config.hidden = (512, 512)  # MLP hidden layers
    config.features = (32, 64)  # conv encoder channels (the decoder mirrors them)
    config.kernel_size = 3
    config.strides = 2
    config.conv_hidden = ()  # dense layers between the conv stack and the latent heads
    config.activation = "relu"
    config.kernel_init = "kaiming_normal"  # or "lecun_normal", "kaiming_uniform", ...
    # "data_mean": the decoder's output bias starts at the training set's pixel means (logits
    # for Bernoulli; `losses.data_mean_output_bias`), as in Burda et al.'s code; MLP decoders.
    config.decoder_bias_init = "zeros"
    # "mlp2": the two-stochastic-layer VAE of Burda et al. 2015 (`models.HierarchicalEncoder`,
    # `models.HierarchicalDecoder`), x -> z1 -> z2. It reads these two fields instead of
    # latent_dim and hidden; pictures and plots show z1 (prior samples are drawn ancestrally).
    config.latent_dims = (100, 50)  # (Z1, Z2)
    config.hierarchical_hidden = ((200, 200), (100, 100))  # hidden of q(z1|x), of q(z2|z1)

    # Objective (`vae_jax.losses`).
    config.likelihood = "bernoulli"
    # True lets likelihood="bernoulli" train on grey levels (data.binarization="none" on data
    # with more than 2 levels): a cross-entropy loss but not a likelihood, so its ELBO and
    # bits/dim mean nothing (pytorch/examples#460). Refused unless set; metrics rows then carry
    # normalised_likelihood=0.
    config.allow_grey_level_bernoulli = False
    config.gaussian_logvar = 0.0  # fixed log-variance of the "gaussian" likelihood
    config.objective = "elbo"  # "elbo" or "iwae"
    config.num_samples = 1  # latent samples per example (K for IWAE)
    config.beta = 1.0  # the KL weight the schedule reaches
    config.kl_schedule = "constant"  # "constant", "linear" (warm-up), "cyclical"
    config.kl_warmup_steps = 0
    config.kl_cycle_steps = 0
    config.kl_cycle_ratio = 0.5
    config.kl_num_cycles = 0  # 0: cycle for the whole run
    config.free_bits = 0.0  # nats per latent dimension; 0 disables (not for "mlp2")

    # Optimisation.
    config.optimizer = "adam"  # "adam" or "adamw"
    config.learning_rate = 1e-3
    config.lr_schedule = "constant"  # "constant", "cosine", "warmup_cosine", "burda"
    # ("burda": 3^i epochs at learning_rate * 10^(-i/7) for i = 0 .. 7, Burda et al. 2015)
    config.burda_epoch_scale = 1.0  # "burda" only: stage i lasts round(scale * 3^i) epochs
    config.lr_warmup_steps = 0
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-8  # Burda et al. 2015 use 1e-4
    config.weight_decay = 0.0  # with "adamw"
    config.grad_clip_norm = 0.0  # 0 disables
    config.max_consecutive_skips = 10  # non-finite updates in a row before the run stops
    config.ema_decay = 0.0  # > 0 keeps an EMA of the parameters, used for evaluation

    # Schedule of the run.
    config.batch_size = 128  # global: split across all devices
    config.eval_batch_size = 256
    config.num_steps = 0  # 0: num_epochs epochs
    config.num_epochs = 10
    config.steps_per_dispatch = 1  # steps per jitted lax.scan; >1 pays for small MLPs
    config.log_every = 100
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.num_image_examples = 16
    return config
