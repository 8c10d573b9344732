"""swin_jax's Mask R-CNN / Cascade Mask R-CNN inference against the PyTorch reference the tests prove it
equal to (mmdet 2.11's test path written out with torchvision's roi_align and batched_nms on Hugging
Face's SwinBackbone: tests/test_detectors.py), on this machine, one image, side by side in alternating
rounds; with the JAX compile time.

  python benchmarks/detection_speed.py                                   # Swin-T Mask R-CNN, 800x1344
  python benchmarks/detection_speed.py --model cascade_mask_rcnn_swin_tiny_patch4_window7 --size 480 640

Every tensor is random (the RPN and box heads scaled so that the boxes are spread and about as many
detections are kept as with trained weights: 1000 proposals, 100 detections). The images/s are of the
median round; the ratio is swin_jax / PyTorch. Both sides must agree (labels, boxes), which is checked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mask_rcnn_swin_tiny_patch4_window7")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344), metavar=("H", "W"),
                        help="the padded input (multiples of 32); the image fills it")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import jax
    import torch
    from transformers import SwinBackbone, SwinConfig

    import swin_jax
    from swin_jax.convert import fitting
    from references import numpy_state, randomize
    from test_detectors import torch_detector
    from test_roi_heads import randomise

    model = swin_jax.create_model(args.model)
    backbone_model = model.backbone
    config = SwinConfig(image_size=224, embed_dim=backbone_model.embed_dim, depths=list(backbone_model.depths),
                        num_heads=list(backbone_model.num_heads), window_size=backbone_model.window_size,
                        out_features=["stage1", "stage2", "stage3", "stage4"], hidden_act="gelu", layer_norm_eps=1e-5)
    backbone = randomize(SwinBackbone(config)).eval()
    variables = randomise(jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32)),
                          scale=0.02)
    for name, head in variables["params"].items():  # a few classes clearly ahead: detections above 0.05
        if name.startswith("bbox_head"):
            head["fc_cls"]["bias"] = 3.0 * jax.random.normal(jax.random.key(7), head["fc_cls"]["bias"].shape)
    state = {k: v for k, v in numpy_state(backbone).items() if not k.startswith("swin.layernorm.")}
    variables["params"]["backbone"] = fitting.swin_params(state, model.backbone)["params"]
    h, w = args.size
    image = np.random.RandomState(0).randn(1, h, w, 3).astype(np.float32)
    hw = np.array([[h, w]], np.int32)

    forward = jax.jit(model.apply)
    start = time.perf_counter()
    compiled = forward.lower(variables, image, hw).compile()
    compile_s = time.perf_counter() - start

    heads = {"rpn_nms_pre": model.rpn_nms_pre, "rpn_max_per_img": model.rpn_max_per_img,
             "max_per_img": model.max_per_img}
    pixels = torch.from_numpy(image).permute(0, 3, 1, 2)
    cascade = model.cascade

    def ours():
        return jax.block_until_ready(compiled(variables, image, hw))

    def reference():
        return torch_detector(backbone, variables, pixels, (h, w), cascade, heads)

    got, want = ours(), reference()
    valid = np.asarray(got["valid"][0])
    agree = bool(valid.sum() == len(want[3]) and (np.asarray(got["labels"][0])[valid] == want[3]).all())
    box_error = float(np.abs(np.asarray(got["boxes"][0])[valid] - want[1]).max()) if valid.any() else 0.0
    times = {"swin_jax": [], "PyTorch": []}
    for _ in range(args.rounds):
        for name, fn in (("swin_jax", ours), ("PyTorch", reference)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {k: 1.0 / statistics.median(v) for k, v in times.items()}
    print(f"{args.model}, {h}x{w}, fp32, {jax.devices()[0].device_kind}, torch threads {torch.get_num_threads()}")
    print(f"detections {int(valid.sum())}, the same labels as PyTorch: {agree}, largest box difference "
          f"{box_error:.1e} px")
    print("| | images/s | ratio |")
    print("|---|---|---|")
    print(f"| swin_jax (compile {compile_s:.0f} s) | {rate['swin_jax']:.3f} | {rate['swin_jax'] / rate['PyTorch']:.2f} |")
    print(f"| PyTorch reference | {rate['PyTorch']:.3f} | 1.00 |")


if __name__ == "__main__":
    main()
