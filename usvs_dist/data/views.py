"""Views a recipe trains on, made from a batch on the training device: the batch's own clips,
frames and log-mels, a sub-clip-shuffled and rotated clip (isbi2020), two augmented views of a frame
and anatomy labels (awcl2022), and each clip's scan and start time (same-scan negatives); see
docs/methods.md. `VIEWS` names each view with the model
inputs and targets it makes (`usvs_dist.models.outputs.OUTPUTS` names the inputs an output
consumes; loss terms name the targets they read).

Random draws use torch's global generator, which each rank seeds differently and saves in
its checkpoint. Shapes: B batch, C channels, T frames, H x W pixels, K sub-clips, P orders.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from usvs_dist.config.schema import AnatomyConfig, AugmentConfig, RootConfig
from usvs_dist.data import schema
from usvs_dist.data.augment import augment_frames
from usvs_dist.data.scan_mix import scan_code


def order_permutations(subclips: int, permutations: int = 0) -> torch.Tensor:
    """[P, K]: the orders to classify; all K! (P = 0) or the first P in lexicographic order."""
    perms = list(itertools.permutations(range(subclips)))
    return torch.tensor(perms[: permutations or len(perms)])


def order_views(video_BCTHW: torch.Tensor, perms_PK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each clip into K sub-clips of T // K frames, reorder them by a random order per clip.

    Returns (clips [B, K, C, T // K, H, W] in the drawn order, order index [B] into perms_PK).
    The T % K trailing frames are not used.
    """
    B, C, T, H, W = video_BCTHW.shape
    K = perms_PK.shape[1]
    if T < K:
        raise ValueError(f"order prediction cuts clips into {K} sub-clips but a clip has only {T} frames")
    length = T // K
    subclips_BKCtHW = video_BCTHW[:, :, : K * length].reshape(B, C, K, length, H, W).transpose(1, 2)
    target_B = torch.randint(len(perms_PK), (B,), device=video_BCTHW.device)
    order_BK = perms_PK.to(video_BCTHW.device)[target_B]
    return subclips_BKCtHW[torch.arange(B, device=video_BCTHW.device)[:, None], order_BK], target_B


def centred_disc(size: int, radius: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[size, size] bool: pixels whose centre lies within `radius` x size / 2 of the frame centre.

    Centred on the pixel grid, so a quarter turn or a flip maps the disc exactly onto itself.
    """
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    return coords[:, None] ** 2 + coords[None, :] ** 2 <= (radius * size / 2) ** 2


def rotation_views(
    clips: torch.Tensor, rotations: int, radius: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each clip by a random multiple of 360/rotations degrees; returns (clips, class [B]).

    The clips are any [B, ..., H, W] with square frames. With `radius`, every clip, rotated or
    not, is set to 0 outside the centred disc of that radius (`centred_disc`): what stays visible
    is the same disc for every class, so the outline of a fan-shaped sector, which a quarter turn
    moves, cannot tell the class; only the content inside the disc can. Without it the whole frame
    turns, outline included.
    """
    H, W = clips.shape[-2:]
    if H != W:
        raise ValueError(f"rotation prediction needs square frames, got {(H, W)}")
    target_B = torch.randint(rotations, (clips.shape[0],), device=clips.device)
    quarter_turns = 4 // rotations
    rotated = clips.clone()
    for k in range(1, rotations):
        rows = target_B == k
        if rows.any():
            rotated[rows] = torch.rot90(clips[rows], k * quarter_turns, dims=(-2, -1))
    if radius is not None:
        rotated.mul_(centred_disc(H, radius, clips.device))
    return rotated, target_B


def pretext_views(
    video_BCTHW: torch.Tensor, perms_PK: torch.Tensor, rotations: int, radius: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """isbi2020's one input: each clip cut into K sub-clips put in a drawn order (`order_views`),
    then the whole reordered clip rotated by a drawn class (`rotation_views`, through the disc of
    `radius` if given), so both predictions are made from the same clip.

    Returns (clips [B, K, C, T // K, H, W], order index [B] into perms_PK, rotation class [B]).
    """
    clips, order_B = order_views(video_BCTHW, perms_PK)
    clips, rotation_B = rotation_views(clips, rotations, radius)
    return clips, order_B, rotation_B


def two_views(image_BCHW: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations (crop inside the sector, jitter, flip) of every frame."""
    B, _, H, _ = image_BCHW.shape
    seeds = torch.randint(2**62, (2, B)).tolist()
    views = [
        torch.stack(
            [augment_frames(x, cfg, H, random.Random(seed)) for x, seed in zip(image_BCHW, row, strict=True)]
        )
        for row in seeds
    ]
    return views[0], views[1]


def anatomy_labels(
    plane_B: torch.Tensor, cfg: AnatomyConfig, vocabulary: schema.Vocabulary = schema.FETAL_PLANES
) -> torch.Tensor:
    """Class labels -> the labels anatomy positives are matched on; -1 where none applies.

    `coarse` matches on the vocabulary's coarse grouping (planes -> anatomies); a vocabulary
    without one is matched on its classes (BatchViews warns once). The background class, when
    the vocabulary names one, is no anatomy unless cfg.background_positive.
    """
    if cfg.granularity == "coarse" and vocabulary.coarse_of:
        table = torch.tensor(vocabulary.coarse_of, device=plane_B.device)
        out = torch.where(plane_B >= 0, table[plane_B.clamp(min=0)], -1)
    else:
        out = plane_B.clone()
    background = vocabulary.background_index
    if not cfg.background_positive and background is not None:
        # On the class itself: its coarse group may hold other classes, which stay anatomies.
        out = torch.where(plane_B == background, -1, out)
    return out


@dataclass(frozen=True)
class ViewBatch:
    """A loader batch bound for the training device, with what views are made with."""

    batch: dict
    device: torch.device
    dtype: torch.dtype
    """The model's compute dtype, for the tensors it takes in."""
    cfg: RootConfig
    vocabulary: schema.Vocabulary = schema.FETAL_PLANES
    """The shards' label classes (index.json), whose coarse grouping anatomy positives use."""

    def moved(self, key: str) -> torch.Tensor:
        """Batch tensor `key` on the device in the compute dtype."""
        return self.batch[key].to(self.device, dtype=self.dtype, non_blocking=True)


@dataclass(frozen=True)
class View:
    """One view: a function of the batch returning the model inputs and targets it declares."""

    make: Callable[[ViewBatch], dict[str, torch.Tensor]]
    inputs: tuple[str, ...] = ()
    """Model inputs it returns (names in models.outputs.OUTPUTS[...].inputs)."""
    targets: tuple[str, ...] = ()
    """Targets it returns, drawn with its inputs (names loss terms read)."""


def _as_is(key: str) -> Callable[[ViewBatch], dict[str, torch.Tensor]]:
    def make(b: ViewBatch) -> dict[str, torch.Tensor]:
        return {key: b.moved(key)}

    return make


# The orders are fixed by the config: computed once, not per batch.
_permutations = functools.lru_cache(order_permutations)


def _pretext(b: ViewBatch) -> dict[str, torch.Tensor]:
    pretext = b.cfg.objective.pretext
    clips, order, rotation = pretext_views(
        b.moved("video"),
        _permutations(pretext.subclips, pretext.permutations),
        pretext.rotations,
        pretext.circle_radius if pretext.transform_region == "circle" else None,
    )
    return {"pretext_clips": clips, "order_target": order, "rotation_target": rotation}


def _two_views(b: ViewBatch) -> dict[str, torch.Tensor]:
    view1, view2 = two_views(b.moved("image"), b.cfg.data.augment)
    return {"image_view1": view1, "image_view2": view2}


def _anatomy(b: ViewBatch) -> dict[str, torch.Tensor]:
    labels = b.batch["image_label"].to(b.device)
    return {"anatomy_label": anatomy_labels(labels, b.cfg.objective.anatomy, b.vocabulary)}


def _scan(b: ViewBatch) -> dict[str, torch.Tensor]:
    # Scan ids as int64 codes, so the losses can gather them with the embeddings.
    codes = torch.tensor([scan_code(s) for s in b.batch["scan"]], dtype=torch.int64)
    return {
        "scan_id": codes.to(b.device, non_blocking=True),
        "clip_t0": torch.as_tensor(b.batch["t0"], dtype=torch.float64).to(b.device, non_blocking=True),
    }


VIEWS: dict[str, View] = {
    # Made in this order, so their random draws come in this order.
    "video": View(_as_is("video"), inputs=("video",)),
    "audio": View(_as_is("audio"), inputs=("audio",)),
    "image": View(_as_is("image"), inputs=("image",)),
    "pretext": View(_pretext, inputs=("pretext_clips",), targets=("order_target", "rotation_target")),
    "two_views": View(_two_views, inputs=("image_view1", "image_view2")),
    "anatomy": View(_anatomy, targets=("anatomy_label",)),
    "scan": View(_scan, targets=("scan_id", "clip_t0")),
}
"""View name -> what it makes from a batch."""


def views_for(inputs: set[str] | frozenset[str], targets: set[str] | frozenset[str]) -> list[View]:
    """The views that make `inputs` and `targets`, in VIEWS order; ValueError on a name none makes."""
    chosen = [v for v in VIEWS.values() if set(v.inputs) & inputs or set(v.targets) & targets]
    made = {name for v in chosen for name in (*v.inputs, *v.targets)}
    missing = (set(inputs) | set(targets)) - made
    if missing:
        raise ValueError(f"no view in usvs_dist.data.views.VIEWS makes {sorted(missing)}")
    return chosen
