"""Fine-tuning Swin-B at 224 (window 7) from a SimMIM pre-training, as the official
simmim_finetune__swin_base__img224_window7__800ep.yaml with `main_simmim_ft.py`: 100 epochs with 20 of
warm-up, base lr 1.25e-3 per 512 images, warm-up and minimum lr 2.5e-7, weight decay 0.05, layer-wise lr
decay 0.8, drop path 0.1, the classification augmentation of the official recipe, global batch 2048
(16 GPUs x 128). config.init_from takes the encoder of the SimMIM workdir's converted export, or of an
official or Hugging Face SimMIM file (the mask token and decoder are left out; the message says so);
the bias tables are resampled from window 6 to 7.

  python train.py --config configs/simmim_finetune_swin_b_224.py --workdir DIR \\
      --config.init_from=simmim_pretrain__swin_base__img192_window6__800ep.pth
"""

from configs import common


def get_config():
    config = common.get_config("swin_base_patch4_window7_224")
    config.batch_size = 2048
    config.epochs = 100
    config.warmup_epochs = 20
    config.base_lr = 1.25e-3
    config.warmup_lr = 2.5e-7
    config.min_lr = 2.5e-7
    config.weight_decay = 0.05
    config.layer_decay = 0.8
    config.model_overrides.drop_path_rate = 0.1
    return config
