"""Real networks for the import tests: the project's dlib rebuild and a small ArcFace-shaped CNN,
both exported to ONNX by torch.onnx (the legacy TorchScript exporter: it needs only `onnx`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARC_DIM = 512


def export_dlib(path: Path) -> Path:
    """models/dlib_resnet.py's rebuild of dlib's ResNet (weights from face-recognition-models):
    NCHW float 0..255 RGB in (normalisation folded into its stem), 128-d out."""
    import torch

    from models.build_embedder import MODEL_FILE, source_dir
    from models.dlib_resnet import build_from_dat

    net = build_from_dat(source_dir() / MODEL_FILE).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 150, 150),), str(path), dynamo=False, opset_version=17,
                      input_names=["chip"], output_names=["descriptor"])  # fmt: skip
    return path


def export_tiny_arcface(path: Path, fit_chips: Any, seed: int = 0) -> Path:
    """A small CNN laid out like an ArcFace network: 112x112 NCHW BGR in, normalised
    (x - 127.5) / 127.5, conv/BN/PReLU stages, flatten, a fully connected layer to a 512-d
    descriptor. The convolutions keep random seeded weights; the last layer is fitted in closed
    form (a centred PCA of the conv features of `fit_chips`, RGB uint8 chips of people the
    tests never show), as eigenfaces are: raw random features share a large common component
    and score every pair of faces alike. A real, if weak, recogniser."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.PReLU(c_out)]

    features = nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64), *stage(64, 64), nn.Flatten()).eval()
    with torch.no_grad():  # running statistics as a trained network would have them, not 0/1
        for m in features.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.from_numpy((np.asarray(fit_chips, np.float32)[..., ::-1].copy() - 127.5) / 127.5).permute(0, 3, 1, 2)
        f = features(x).double()
        mean = f.mean(0)
        _, _, v = torch.linalg.svd(f - mean, full_matrices=False)
        w = v[:ARC_DIM]
        fc = nn.Linear(int(f.shape[1]), ARC_DIM)
        fc.weight.copy_(w.float())
        fc.bias.copy_((-w @ mean).float())
    net = nn.Sequential(features, fc).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, opset_version=17,
                      input_names=["data"], output_names=["fc1"])  # fmt: skip
    return path
