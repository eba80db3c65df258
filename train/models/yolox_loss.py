"""YOLOX training loss (Ge et al. 2021): SimOTA label assignment, IoU, objectness and class terms.

Works on the raw head output of ``train.models.yolox.YOLOX`` — (B, A, 5 + C) with box regression
in grid units, objectness and class logits — and decodes boxes exactly as the edge does
(``edge.runtime.yolox.decode_yolox``): centre ``(xy + grid) * stride``, size ``exp(wh) * stride``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from edge.runtime.yolox import make_grid

CENTER_RADIUS = 2.5  # candidate points lie within this many strides of a box centre (or inside it)
TOP_IOUS = 10  # dynamic k = sum of a box's top-10 candidate IoUs
IOU_COST_WEIGHT = 3.0
OUTSIDE_COST = 1e5  # points not both inside the box and near its centre are picked only as a last resort
REG_WEIGHT = 5.0  # Megvii's weight of the IoU term


@dataclass(frozen=True)
class Targets:
    """Ground truth of one image: ``xyxy`` (N, 4) float32 in input pixels, ``class_id`` (N,) int64."""

    xyxy: torch.Tensor
    class_id: torch.Tensor

    def __post_init__(self) -> None:
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4 or self.class_id.shape != (len(self.xyxy),):
            raise ValueError(f"targets need xyxy (N, 4) and class_id (N,), got {tuple(self.xyxy.shape)}, "
                             f"{tuple(self.class_id.shape)}")

    @classmethod
    def from_numpy(cls, xyxy: np.ndarray, class_id: np.ndarray) -> "Targets":
        """Targets from numpy arrays (any float / int dtypes)."""
        return cls(torch.as_tensor(np.asarray(xyxy, np.float32).reshape(-1, 4)),
                   torch.as_tensor(np.asarray(class_id, np.int64).reshape(-1)))


@dataclass(frozen=True)
class Assignment:
    """SimOTA's result for one image: which points are foreground, their box and its IoU."""

    foreground: torch.Tensor  # (A,) bool
    gt_index: torch.Tensor  # (F,) int64, the box of each foreground point, in point order
    iou: torch.Tensor  # (F,) IoU of each foreground point's predicted box with its box

    @classmethod
    def background(cls, num_points: int) -> "Assignment":
        """No foreground point (an image without boxes)."""
        return cls(torch.zeros(num_points, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0))


@dataclass(frozen=True)
class LossParts:
    """The loss and its terms (each already divided by the number of foreground points)."""

    total: torch.Tensor
    iou: torch.Tensor
    objectness: torch.Tensor
    classification: torch.Tensor
    num_foreground: int


@dataclass(frozen=True)
class AnchorGrid:
    """Anchor points: ``points`` (A, 2) in cells and ``strides`` (A, 1), as the edge makes them."""

    points: torch.Tensor
    strides: torch.Tensor

    @classmethod
    def for_size(cls, size: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)) -> "AnchorGrid":
        """The points of an input size (h, w), from ``edge.runtime.yolox.make_grid``."""
        grid, stride_col = make_grid(tuple(size), list(strides))
        return cls(torch.from_numpy(grid), torch.from_numpy(stride_col))

    def __getitem__(self, index: torch.Tensor) -> "AnchorGrid":
        """Some of the points (a bool mask or indices, repeats allowed)."""
        return AnchorGrid(self.points[index], self.strides[index])

    def __len__(self) -> int:
        return len(self.points)

    def centres(self) -> torch.Tensor:
        """Cell centres in input pixels (A, 2): where the centre prior is measured from."""
        return (self.points + 0.5) * self.strides


def decode_boxes(raw: torch.Tensor, grid: AnchorGrid) -> torch.Tensor:
    """Raw (..., A, 5 + C) → xyxy boxes (..., A, 4) in input pixels, as ``decode_yolox`` decodes them."""
    centre = (raw[..., :2] + grid.points) * grid.strides
    half = torch.exp(raw[..., 2:4].clamp(max=20.0)) * grid.strides / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every xyxy box in ``a`` (N, 4) with every box in ``b`` (M, 4): (N, M)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def aligned_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b`` (both (N, 4) xyxy): (N,)."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1) - inter
    return inter / union.clamp(min=1e-9)


def centre_prior(gt_xyxy: torch.Tensor, grid: AnchorGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Which points may take which box.

    Returns:
        ``candidates`` (A,): points inside any box or within ``CENTER_RADIUS`` strides of its
        centre; ``both`` (G, A): points inside a box *and* near its centre.
    """
    centres = grid.centres()
    inside = _inside(centres, gt_xyxy)
    box_centre = (gt_xyxy[:, :2] + gt_xyxy[:, 2:]) / 2
    offset = (centres[None] - box_centre[:, None]).abs()  # (G, A, 2)
    near = (offset < CENTER_RADIUS * grid.strides[None]).all(-1)
    return (inside | near).any(0), inside & near


def _inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(G, A) whether each of the (A, 2) points lies strictly inside each of the (G, 4) boxes."""
    x, y = points[None, :, 0], points[None, :, 1]
    b = boxes[:, None, :]
    return (x > b[..., 0]) & (y > b[..., 1]) & (x < b[..., 2]) & (y < b[..., 3])


def dynamic_k_matching(cost: torch.Tensor, ious: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box takes its k cheapest points, k = int(sum of its top-10 IoUs) ≥ 1; a point claimed by
    several boxes goes to the cheapest.

    Args:
        cost: (G, N) cost of each box with each candidate point.
        ious: (G, N) IoU of each box with each candidate's predicted box.

    Returns:
        ``chosen`` (N,) bool and the box index of each chosen point (in candidate order).
    """
    top = torch.topk(ious, min(TOP_IOUS, ious.shape[1]), dim=1).values
    ks = top.sum(1).int().clamp(min=1, max=cost.shape[1])
    matching = torch.zeros_like(cost, dtype=torch.bool)
    for g, k in enumerate(ks.tolist()):
        matching[g, torch.topk(cost[g], k, largest=False).indices] = True
    shared = matching.sum(0) > 1
    if shared.any():
        cheapest = cost[:, shared].argmin(0)
        matching[:, shared] = False
        matching[cheapest, shared.nonzero().squeeze(1)] = True
    chosen = matching.any(0)
    return chosen, matching[:, chosen].float().argmax(0)


def _matching_cost(raw_c: torch.Tensor, class_id: torch.Tensor, ious: torch.Tensor, both: torch.Tensor,
                   ) -> torch.Tensor:
    """(G, N) SimOTA cost of each box with each candidate: class BCE of sqrt(obj × cls) + 3 × IoU
    loss + a large penalty where the point is not both inside the box and near its centre."""
    scores = (raw_c[:, 5:].sigmoid() * raw_c[:, 4:5].sigmoid()).sqrt()  # (N, C)
    onehot = F.one_hot(class_id, raw_c.shape[1] - 5).float()  # (G, C)
    cls_cost = F.binary_cross_entropy(scores[None].expand(len(onehot), -1, -1).clamp(1e-7, 1 - 1e-7),
                                      onehot[:, None].expand(-1, len(scores), -1), reduction="none").sum(-1)
    return cls_cost + IOU_COST_WEIGHT * -torch.log(ious + 1e-8) + OUTSIDE_COST * (~both).float()


@torch.no_grad()
def simota_assign(raw: torch.Tensor, targets: Targets, grid: AnchorGrid) -> Assignment:
    """SimOTA label assignment of one image.

    Args:
        raw: (A, 5 + C) the head's raw output for the image.
        targets: its boxes in input pixels and class ids.
        grid: the anchor points of the input size.

    Returns:
        The foreground points, the box each one regresses and its current IoU with that box.
    """
    candidates, both = centre_prior(targets.xyxy, grid) if len(targets.xyxy) else (None, None)
    if candidates is None or not candidates.any():  # no box, or every box off the input
        return Assignment.background(raw.shape[0])
    raw_c = raw[candidates].float()
    ious = pairwise_iou(targets.xyxy, decode_boxes(raw_c, grid[candidates]))
    cost = _matching_cost(raw_c, targets.class_id, ious, both[:, candidates])
    chosen, gt_index = dynamic_k_matching(cost, ious)
    foreground = torch.zeros(raw.shape[0], dtype=torch.bool)
    foreground[candidates.nonzero().squeeze(1)[chosen]] = True
    return Assignment(foreground, gt_index, ious[gt_index, chosen.nonzero().squeeze(1)])


def yolox_loss(raw: torch.Tensor, targets: list[Targets], grid: AnchorGrid) -> LossParts:
    """The YOLOX loss of a batch.

    IoU loss ``1 - IoU²`` of the foreground points' decoded boxes (weight 5), objectness BCE on
    all points (target 1 on foreground, 0 elsewhere), class BCE on foreground points with target
    one-hot × IoU; each summed over the batch and divided by the number of foreground points
    (at least 1, so images without boxes only pay for their objectness).

    Args:
        raw: (B, A, 5 + C) head output.
        targets: one ``Targets`` per image.
        grid: anchor points of the input size (A points).

    Returns:
        The total and its terms.
    """
    if len(targets) != raw.shape[0] or raw.shape[1] != len(grid):
        raise ValueError(f"raw output {tuple(raw.shape)} does not match {len(targets)} images of {len(grid)} points")
    assignments = [simota_assign(r, t, grid) for r, t in zip(raw, targets)]
    foreground = torch.stack([a.foreground for a in assignments])
    num_fg = int(foreground.sum())
    fg_raw = raw[foreground]  # (F, 5 + C), image by image in point order
    gt_boxes = torch.cat([t.xyxy[a.gt_index] for t, a in zip(targets, assignments)])
    gt_class = torch.cat([t.class_id[a.gt_index] for t, a in zip(targets, assignments)])
    match_iou = torch.cat([a.iou for a in assignments])
    pred_boxes = decode_boxes(fg_raw, grid[foreground.nonzero()[:, 1]])
    iou_loss = (1 - aligned_iou(pred_boxes, gt_boxes) ** 2).sum()
    obj_loss = F.binary_cross_entropy_with_logits(raw[..., 4], foreground.to(raw.dtype), reduction="sum")
    cls_target = F.one_hot(gt_class, raw.shape[-1] - 5).to(raw.dtype) * match_iou[:, None]
    cls_loss = F.binary_cross_entropy_with_logits(fg_raw[:, 5:], cls_target, reduction="sum")
    norm = max(num_fg, 1)
    parts = REG_WEIGHT * iou_loss / norm, obj_loss / norm, cls_loss / norm
    return LossParts(sum(parts), *parts, num_foreground=num_fg)
