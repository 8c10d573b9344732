"""Fine-tuning the demo Swin on 10% of the labelled training digits (the first 144 of 1437), from a SimMIM
pre-training (configs/demo_simmim.py) or, without init_from, from random initialisation: the measure of
what pre-training buys. Top-1 on the 360 held-out digits. The official fine-tuning recipe's shape: layer-
wise lr decay 0.8, warm-up, cosine to a small minimum, drop path 0.1. About 75 s on two CPU cores.

  python train.py --config configs/demo_simmim_finetune.py --workdir /tmp/ft --config.init_from=/tmp/simmim
  python train.py --config configs/demo_simmim_finetune.py --workdir /tmp/scratch    # the baseline
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.input.demo_train_examples = 144
    config.batch_size = 32  # 4 steps per epoch
    config.epochs = 100
    config.warmup_epochs = 10
    config.layer_decay = 0.8
    config.log_every_steps = 20
    config.eval_every_steps = 100  # every 25 epochs
    config.checkpoint_every_steps = 400
    return config
