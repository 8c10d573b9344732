"""UPerNet with a Swin-S backbone on ADE20K, 512x512 crops, 160k iterations at batch 16: the official
configs/swin/upernet_swin_small_patch4_window7_512x512_160k_ade20k.py (recipe in configs/segmentation.py).
The backbone starts from the ImageNet checkpoint named by init_from (a .pth file or a converted directory);
the heads start fresh.

  python train.py --config configs/upernet_swin_s_ade20k.py --workdir DIR \
      --config.input.data_dir=/data/ADEChallengeData2016 \
      --config.init_from=swin_small_patch4_window7_224.pth
"""

from configs import segmentation


def get_config():
    config = segmentation.get_config("upernet_swin_small")  # window 7, drop path 0.3
    config.init_from = "swin_small_patch4_window7_224.pth"
    return config
