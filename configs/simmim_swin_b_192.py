"""SimMIM pre-training of Swin-B at 192 with window 6 on ImageNet-1K, 800 epochs, as the official
simmim_pretrain__swin_base__img192_window6__800ep.yaml (drop path 0). Fine-tune the result with
configs/simmim_finetune_swin_b_224.py.

  python train.py --config configs/simmim_swin_b_192.py --workdir DIR
"""

from configs import simmim


def get_config():
    return simmim.get_config("simmim_swin_base_img192_window6")
