"""S3FD, the face detector syncnet_python (and LatentSync's eval) crops Sync-C / Sync-D faces with.

Written anew after LatentSync's eval/detectors/s3fd (nets.py `S3FDNet`, box_utils.py `PriorBox`, `decode`,
`nms`, `Detect`, `nms_`), itself syncnet_python's copy of Zhang et al.'s S3FD. The state-dict names and
shapes are upstream's, so its `sfd_face.pth` loads strictly as it is; the detection head is the same
arithmetic in the same order, so its boxes equal upstream's on the same network outputs.

Glossary: B batch, H/W pixels of the network's input, P prior boxes (anchors) over all six levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# vgg[:16] ends at conv3_3 + ReLU (stride 4), vgg[:23] at conv4_3 (stride 8), vgg[:30] at conv5_3 (stride 16);
# the rest is fc6/fc7 (stride 32). Upstream's ModuleList keeps the ReLUs and pools, so the indices are its.
CONV3_3_END, CONV4_3_END, CONV5_3_END = 16, 23, 30


@dataclass(frozen=True)
class S3FDConfig:
    """The detector head of upstream's `PriorBox` and `Detect` (the network's geometry is fixed by the
    published weights)."""

    min_sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # square anchor side per level, input pixels
    steps: tuple[int, ...] = (4, 8, 16, 32, 64, 128)  # stride of each level
    variances: tuple[float, float] = (0.1, 0.2)  # centre and size variances of the box encoding
    conf_thresh: float = 0.05  # face probability a prior needs to enter the non-maximum suppression
    nms_thresh: float = 0.3  # IoU above which the weaker box is suppressed
    nms_top_k: int = 5000  # the most candidates the suppression looks at (highest scores)
    top_k: int = 750  # the most detections kept per class
    l2norm_scales: tuple[float, float, float] = (10.0, 8.0, 5.0)  # initial scales of conv3_3/4_3/5_3's L2Norm


class S3FDHeads(NamedTuple):
    """The network's raw outputs for one batch."""

    loc: torch.Tensor  # (B, P, 4) encoded box offsets
    scores: torch.Tensor  # (B, P, 2) softmax over (background, face)
    priors: torch.Tensor  # (P, 4) float32 anchors (cx, cy, w, h), fractions of the input's W and H


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnt per-channel scale (ParseNet)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, C, h, w)."""
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        x = torch.div(x, norm)
        return self.weight.unsqueeze(0).unsqueeze(2).unsqueeze(3).expand_as(x) * x


def _vgg() -> nn.ModuleList:
    """VGG16's convolutions with fc6/fc7 as (dilated) convolutions; pool3 rounds up."""
    layers: list[nn.Module] = []
    channels = 3
    for block, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, 1, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=block == 2))
    layers += [
        nn.Conv2d(512, 1024, 3, 1, padding=6, dilation=6),
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, 1, 1),
        nn.ReLU(inplace=True),
    ]
    return nn.ModuleList(layers)


class S3FDNet(nn.Module):
    """S3FD: VGG16 with six detection levels (strides 4–128), upstream's state-dict names.

    `forward` takes the mean-subtracted RGB image (B, 3, H, W) (see synclip.eval.face_tracks.detect_faces)
    and returns the raw heads; `detect` adds the detection head, (B, 2, top_k, 5) as upstream's
    `S3FDNet.forward`: per class, rows (score, x1, y1, x2, y2) in fractions of W and H, best first, zeros
    after the last detection; class 0 (background) stays all zero.
    """

    def __init__(self, config: S3FDConfig) -> None:
        super().__init__()
        self.config = config
        self.vgg = _vgg()
        scale3, scale4, scale5 = config.l2norm_scales
        self.L2Norm3_3 = L2Norm(256, scale3)
        self.L2Norm4_3 = L2Norm(512, scale4)
        self.L2Norm5_3 = L2Norm(512, scale5)
        self.extras = nn.ModuleList(
            [
                nn.Conv2d(1024, 256, 1, 1),
                nn.Conv2d(256, 512, 3, 2, padding=1),
                nn.Conv2d(512, 128, 1, 1),
                nn.Conv2d(128, 256, 3, 2, padding=1),
            ]
        )
        source_channels = (256, 512, 512, 1024, 512, 256)
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, 1, padding=1) for c in source_channels])
        # level 0 predicts 3 background logits and 1 face logit ("max-out background", S3FD §3.3)
        self.conf = nn.ModuleList(
            [nn.Conv2d(c, 4 if level == 0 else 2, 3, 1, padding=1) for level, c in enumerate(source_channels)]
        )

    def forward(self, x: torch.Tensor) -> S3FDHeads:
        """(B, 3, H, W) mean-subtracted RGB → loc (B, P, 4), scores (B, P, 2), priors (P, 4)."""
        image_size = (x.shape[2], x.shape[3])
        sources = []
        for k in range(CONV3_3_END):
            x = self.vgg[k](x)
        sources.append(self.L2Norm3_3(x))
        for k in range(CONV3_3_END, CONV4_3_END):
            x = self.vgg[k](x)
        sources.append(self.L2Norm4_3(x))
        for k in range(CONV4_3_END, CONV5_3_END):
            x = self.vgg[k](x)
        sources.append(self.L2Norm5_3(x))
        for k in range(CONV5_3_END, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)

        locs, confs = [], []
        for level, source in enumerate(sources):
            conf = self.conf[level](source)
            if level == 0:
                background, _ = torch.max(conf[:, 0:3], dim=1, keepdim=True)
                conf = torch.cat((background, conf[:, 3:]), dim=1)
            locs.append(self.loc[level](source).permute(0, 2, 3, 1).contiguous())  # (B, h, w, 4)
            confs.append(conf.permute(0, 2, 3, 1).contiguous())  # (B, h, w, 2)
        feature_sizes = [(loc.shape[1], loc.shape[2]) for loc in locs]
        batch = x.shape[0]
        loc = torch.cat([o.view(batch, -1) for o in locs], 1).view(batch, -1, 4)
        conf = torch.cat([o.view(batch, -1) for o in confs], 1).view(batch, -1, 2)
        priors = prior_boxes(image_size, feature_sizes, self.config).to(x.device)
        return S3FDHeads(loc, torch.softmax(conf, dim=-1), priors)

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) mean-subtracted RGB → (B, 2, top_k, 5) detections (see the class docstring)."""
        return detect(self(x), self.config)


def prior_boxes(
    image_size: tuple[int, int], feature_sizes: list[tuple[int, int]], config: S3FDConfig
) -> torch.Tensor:
    """(P, 4) float32 square anchors (cx, cy, w, h) as fractions of the input, level by level, row-major:
    upstream's `PriorBox.forward` (Python floats, then one float32 rounding)."""
    height, width = image_size
    rows = []
    for (feat_h, feat_w), step, size in zip(feature_sizes, config.steps, config.min_sizes, strict=True):
        # float64 as upstream's Python floats: (j + 0.5) / (W / step), with the same two divisions
        cx = (np.arange(feat_w) + 0.5) / (width / step)
        cy = (np.arange(feat_h) + 0.5) / (height / step)
        grid_y, grid_x = np.meshgrid(cy, cx, indexing="ij")  # (h, w) each
        level = np.stack(
            [grid_x, grid_y, np.full_like(grid_x, size / width), np.full_like(grid_x, size / height)], axis=-1
        )
        rows.append(level.reshape(-1, 4))
    return torch.from_numpy(np.concatenate(rows).astype(np.float32))


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """(P, 4) offsets + (P, 4) priors → (P, 4) corner boxes (x1, y1, x2, y2), fractions of the input
    (upstream's `decode`, the SSD encoding)."""
    boxes = torch.cat(
        (
            priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
            priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1]),
        ),
        1,
    )
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _candidate_nms(
    boxes: torch.Tensor, scores: torch.Tensor, overlap: float, top_k: int
) -> tuple[torch.Tensor, int]:
    """Greedy suppression of (M, 4) boxes by (M,) scores: (kept indices padded with zeros (M,), count).

    Upstream's box_utils `nms` op for op: its ascending `sort` (so ties break as torch's sort does), its
    top-k cut and its IoU (inter / (area_rest − inter + area_best)) kept at or below `overlap`.
    """
    keep = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    if boxes.numel() == 0:
        return keep, 0
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = torch.mul(x2 - x1, y2 - y1)
    _, idx = scores.sort(0)  # ascending
    idx = idx[-top_k:]
    count = 0
    while idx.numel() > 0:
        i = idx[-1]
        keep[count] = i
        count += 1
        if idx.size(0) == 1:
            break
        idx = idx[:-1]
        xx1 = torch.clamp(torch.index_select(x1, 0, idx), min=x1[i])
        yy1 = torch.clamp(torch.index_select(y1, 0, idx), min=y1[i])
        xx2 = torch.clamp(torch.index_select(x2, 0, idx), max=x2[i])
        yy2 = torch.clamp(torch.index_select(y2, 0, idx), max=y2[i])
        w = torch.clamp(xx2 - xx1, min=0.0)
        h = torch.clamp(yy2 - yy1, min=0.0)
        inter = w * h
        union = (torch.index_select(area, 0, idx) - inter) + area[i]
        idx = idx[(inter / union).le(overlap)]
    return keep, count


def detect(heads: S3FDHeads, config: S3FDConfig) -> torch.Tensor:
    """Raw heads → (B, 2, top_k, 5) detections (score, x1, y1, x2, y2), best first: upstream's `Detect`
    (decode every prior, keep faces above conf_thresh, suppress at nms_thresh, at most top_k).

    The output has the heads' dtype (upstream's is always float32: it fills a default-dtype buffer).
    """
    loc, scores, priors = heads
    batch, num_priors, _ = loc.shape
    num_classes = scores.shape[-1]
    conf_preds = scores.transpose(2, 1)  # (B, classes, P)
    batch_priors = priors.view(-1, num_priors, 4).expand(batch, num_priors, 4).contiguous().view(-1, 4)
    decoded = decode_boxes(loc.reshape(-1, 4), batch_priors, config.variances).view(batch, num_priors, 4)
    output = torch.zeros(batch, num_classes, config.top_k, 5, dtype=loc.dtype, device=loc.device)
    for b in range(batch):
        boxes = decoded[b]
        for cl in range(1, num_classes):
            mask = conf_preds[b, cl].gt(config.conf_thresh)
            class_scores = conf_preds[b, cl][mask]
            class_boxes = boxes[mask]
            ids, count = _candidate_nms(class_boxes, class_scores, config.nms_thresh, config.nms_top_k)
            count = min(count, config.top_k)
            output[b, cl, :count] = torch.cat(
                (class_scores[ids[:count]].unsqueeze(1), class_boxes[ids[:count]]), 1
            )
    return output


def nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    """(K,) int32 indices of (K, 5) detections (x1, y1, x2, y2, score) kept by greedy suppression, best
    first: a box goes when its IoU with a kept one exceeds `thresh`. Upstream's `nms_` (Girshick's
    py_cpu_nms, areas without the +1), with its `argsort` so ties break the same way."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return np.array(keep).astype(np.int32)
