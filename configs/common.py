"""The official Swin recipe (ImageNet-1K from scratch, 300 epochs) shared by every config.

Not run directly; configs/swin_*.py, demo.py and the fine-tuning configs start from `get_config()`.
"""

import ml_collections

from swin_jax import data


def get_config(model: str = "swin_tiny_patch4_window7_224") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "classification"  # or "segmentation" (configs/upernet_*, demo_seg.py): swin_jax.tasks
    config.model = model
    config.model_overrides = ml_collections.ConfigDict()  # any SwinTransformer field, e.g. drop_path_rate
    config.model_dtype = "float32"  # compute dtype; 'bfloat16' for mixed precision (parameters stay fp32)
    config.remat = False  # recompute each block pair in the backward pass to save memory
    config.scan_unroll = False  # True: block pairs compiled unrolled (CPU: ~5% faster, more memory, slower compile)
    config.attention_impl = "auto"  # window-attention kernel: auto, xla, jax, cudnn, tokamax (swin_jax/models/layers.py)

    # Fields every run has; `dataset`, `batch_size` and `image_size` are shared with config.input.
    config.dataset = "imagenet2012"
    config.batch_size = 1024  # global, over all devices and processes
    config.image_size = 224
    config.seed = 0
    config.total_steps = 0  # > 0 overrides `epochs`
    config.log_every_steps = 100
    config.eval_every_steps = 0  # 0 = once per epoch
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    # Multi-process runs: a process silent this long is reported lost (which one, at which step) and every
    # other process exits, leaving the checkpoints saved before; 0 leaves it to JAX's heartbeat (100 s).
    config.lost_process_timeout_s = 20.0

    config.input = data.default_config()
    config.input.dataset = config.get_ref("dataset")
    config.input.batch_size = config.get_ref("batch_size")
    config.input.image_size = config.get_ref("image_size")

    # Optimiser and schedule (official config.py); learning rates are per 512 images.
    config.epochs = 300
    config.warmup_epochs = 20
    config.base_lr = 5e-4
    config.warmup_lr = 5e-7
    config.min_lr = 5e-6
    config.lr_base_batch_size = 512
    config.weight_decay = 0.05
    config.betas = (0.9, 0.999)
    config.eps = 1e-8
    config.clip_grad = 5.0  # global norm; 0 = off
    config.grad_accum_steps = 1
    config.schedule = "cosine"  # 'poly': mmcv's poly schedule (dense prediction); 'multistep': SimMIM's
    config.lr_milestones = ()  # multistep: epochs at which the rate is multiplied by lr_gamma
    config.lr_gamma = 0.1
    config.warmup_steps = 0  # > 0 overrides warmup_epochs
    # When each update takes its rate. 'official': main.py steps the scheduler after optimizer.step(), so
    # update u runs at the schedule's rate for u - 1 and the first two at warmup_lr. 'timm': update u at
    # the rate for u (timm's train.py; mmcv's runner). The logged lr is the rate the update used.
    config.lr_schedule_placement = "official"
    config.warmup_ratio = 1e-6  # poly: mmcv's linear warm-up starts at this fraction of the rate
    config.poly_power = 1.0
    # Names (substrings of a parameter's path) that get no weight decay, mmcv's custom_keys with
    # decay_mult 0; empty: the official Swin rule (optim.decays).
    config.no_decay_keys = ()
    config.layer_decay = 1.0  # < 1: layer-wise lr decay (fine-tuning)
    # mmdet/mmseg's frozen_stages: >= 0 freezes the patch embedding, >= 1 also the absolute position
    # embedding, k >= 2 also the first k - 1 stages (each with the patch merging after it); -1: none.
    config.frozen_stages = -1
    config.ema_decay = 0.0  # > 0: keep and evaluate an EMA of the weights

    config.fsdp = False  # shard parameters and optimiser state over the data axis
    config.eval_only = False
    config.init_from = ""  # a `python -m swin_jax.convert` directory or a PyTorch checkpoint file
    config.init_class_map = ""  # map22kto1k.txt when narrowing a 22K head to 1K
    return config
