"""The official SimMIM pre-training recipe (microsoft/Swin-Transformer `main_simmim_pt.py`, `config.py`,
`lr_scheduler.py`, configs/simmim/simmim_pretrain__*.yaml), shared by the SimMIM configs. Not run directly.

What the official run did, field by field:
  input      RandomResizedCrop 192 (scale 0.67-1, ratio 3/4-4/3, bilinear), horizontal flip 0.5,
             ImageNet normalisation; no RandAugment, erasing or Mixup; labels unused.
  masks      MaskGenerator(192, mask_patch_size 32, model_patch_size 4, ratio 0.6): 22 of the 6x6
             cells of every image.
  optimizer  AdamW (0.9, 0.999), eps 1e-8, weight decay 0.05, none on 1-D tensors, biases,
             absolute_pos_embed, relative_position_bias_table and mask_token; gradient clipping at 5.
  schedule   per step: linear warm-up over 10 epochs from warmup_lr 5e-7, then base lr 1e-4, times 0.1
             from epoch 700 on ('multistep', MULTISTEPS [700], GAMMA 0.1); 800 epochs. Learning rates
             are per 512 images and scale linearly with the global batch (and accumulation steps).
             main_simmim_pt.py steps the scheduler after the optimiser step, as main.py does: update u
             runs at the rate for u - 1 ('official' lr_schedule_placement). (With accumulation it counts
             the schedule in micro-batches; we count it in updates, as main.py does.)
  batch      2048 (the official command: 16 GPUs x 128).
"""

from configs import common


def get_config(model: str = "simmim_swin_base_img192_window6") -> "ml_collections.ConfigDict":  # noqa: F821
    config = common.get_config(model)
    config.task = "simmim"
    config.batch_size = 2048
    config.image_size = 192
    config.epochs = 800
    config.warmup_epochs = 10
    config.base_lr = 1e-4
    config.warmup_lr = 5e-7
    config.min_lr = 5e-6  # unused by 'multistep'
    config.weight_decay = 0.05
    config.clip_grad = 5.0
    config.schedule = "multistep"
    config.lr_schedule_placement = "official"  # main_simmim_pt.py: step_update after optimizer.step()
    config.lr_milestones = (700,)
    config.lr_gamma = 0.1
    config.checkpoint_every_steps = 5000
    config.eval_every_steps = 5000

    config.input.scale = (0.67, 1.0)
    config.input.ratio = (3 / 4, 4 / 3)
    config.input.hflip = 0.5
    config.input.interpolation = "bilinear"
    config.input.rand_augment = ""
    config.input.random_erase = 0.0
    config.input.mixup_alpha = 0.0
    config.input.cutmix_alpha = 0.0
    config.input.label_smoothing = 0.0
    config.input.labelled = False  # labels are not used: any image folder or TFDS image dataset
    config.input.mask_patch_size = 32
    config.input.mask_ratio = 0.6
    return config
