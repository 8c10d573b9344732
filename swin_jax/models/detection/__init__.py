"""Two-stage detectors on a Swin backbone (Mask R-CNN, Cascade Mask R-CNN), as mmdet 2.11 runs them in the
official Swin detection code, built from small static-shape parts: boxes (anchors, the delta coder, IoU),
nms, roi_align, fpn, rpn."""
