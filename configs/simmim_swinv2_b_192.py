"""SimMIM pre-training of SwinV2-B at 192 with window 12 on ImageNet-1K, 800 epochs, as the official
simmim_pretrain__swinv2_base__img192_window12__800ep.yaml: drop path 0.1 and targets normalised over
47x47 neighbourhoods (NORM_TARGET).

  python train.py --config configs/simmim_swinv2_b_192.py --workdir DIR
"""

from configs import simmim


def get_config():
    config = simmim.get_config("simmim_swinv2_base_img192_window12")
    config.model_overrides.norm_target_window = 47
    return config
