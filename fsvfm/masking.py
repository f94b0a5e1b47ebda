"""CRFR-P masking: Cover a Random Facial Region, then mask the rest Proportionally.

Computed for the whole batch at once with tensor operations (the original looped over samples,
groups and patches in Python).

Semantics:
* one region group per batch, drawn uniformly from the first six groups of ``REGION_GROUPS``;
* a patch belongs to a group if any of its pixels carries one of the group's labels; it belongs
  to the face boundary iff it holds a hair-or-background pixel and a skin pixel;
* normal case: all region patches are masked; every other patch is assigned to the first other
  group (table order, skipping the chosen one by value) that contains it, and each group masks
  ``round(|C_g| * rho)`` of its patches (round half to even), ``rho = n / (L - |F|)``,
  ``n = M - |F|``; then random non-region patches are masked/unmasked to reach exactly ``M``;
* extreme case (``|F| >= M``): ``M`` random region patches stay masked and the region mask
  shrinks to them.

The masked count is ``M = round(mask_ratio * L)`` (Python ``round``), the same number that the
encoder in ``fsvfm.models_fsfm`` drops, so the collate and the encoder always agree (DEVIATIONS.md P8:
the original truncated ``r*L`` here and ``L*(1-r)`` there). Random draws use the given
``torch.Generator`` or the global torch RNG (seeded per DataLoader worker by PyTorch), including
the region choice (the original used Python's unseeded ``random``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fsvfm.util.errors import UsageError

# (name, LaPa labels); the face boundary is special-cased (hair or background, and skin).
REGION_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("eyebrows", (2, 3)),
    ("eyes", (4, 5)),
    ("nose", (6,)),
    ("mouth", (7, 8, 9)),
    ("face_boundary", (10, 1, 0)),
    ("hair", (10,)),
    ("facial_skin", (1,)),
    ("background", (0,)),
)
NUM_CHOOSABLE_REGIONS = 6  # skin and background are never the covered region
FACE_BOUNDARY = 4
_SKIN_BIT, _OUTER_BITS = 1 << 1, (1 << 10) | (1 << 0)
_GROUP_BITS = [sum(1 << label for label in labels) for _, labels in REGION_GROUPS]


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """Masked patches per sample, ``round(mask_ratio * L)``; the encoder keeps ``L`` minus this."""
    return round(num_patches * mask_ratio)


def _or_reduce(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Bitwise OR over ``dim`` by repeated halving (log2 steps of contiguous vector ops)."""
    while x.shape[dim] > 1:
        n = x.shape[dim]
        half = n // 2
        y = x.narrow(dim, 0, half) | x.narrow(dim, half, half)
        if n % 2:
            y.narrow(dim, 0, 1).bitwise_or_(x.narrow(dim, n - 1, 1))
        x = y
    return x.squeeze(dim)


def patch_label_bits(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per patch, the set of labels present as a bit field.

    maps: [B, H, W] (or [B, 1, H, W]) integer labels 0..10, H and W multiples of ``patch_size``.
    Returns int16 [B, L] with bit ``k`` set iff some pixel of the patch has label ``k``;
    L = (H/P)(W/P), row-major. Labels outside 0..14 set no group bit.
    """
    if maps.dim() == 4:
        maps = maps.squeeze(1)
    b, h, w = maps.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"map size {h}x{w} is not a multiple of the patch size {p}")
    lo, hi = torch.aminmax(maps)
    if maps.dtype.is_floating_point or int(lo) < 0 or int(hi) > 14:
        # Rare path (corrupt labels): anything outside 0..14 becomes bit 15, which no group uses.
        maps = torch.where((maps >= 0) & (maps < 15), maps, 15)
    bits = maps.to(torch.int16, copy=True)
    torch.bitwise_left_shift(torch.ones((), dtype=torch.int16, device=bits.device), bits, out=bits)
    bits = _or_reduce(bits.view(b * (h // p), p, w), dim=1)          # rows inside a patch
    bits = _or_reduce(bits.view(b * (h // p), w // p, p), dim=2)     # columns inside a patch
    return bits.view(b, (h // p) * (w // p))


def group_membership(bits: torch.Tensor) -> torch.Tensor:
    """bits: int16 [B, L] -> bool [B, 8, L], patch membership of every group of ``REGION_GROUPS``."""
    member = torch.stack([(bits & g) != 0 for g in _GROUP_BITS], dim=1)
    member[:, FACE_BOUNDARY] = ((bits & _OUTER_BITS) != 0) & ((bits & _SKIN_BIT) != 0)
    return member


def _select_per_group(group_id: torch.Tensor, quota: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Pick ``quota[b, g]`` patches uniformly at random among the patches of group ``g`` (per sample).

    group_id: long [B, L] in 0..G-1; quota: long [B, G] (values above the group size take all).
    Returns bool [B, L]. Patches are ranked within their group by iid uniform keys and the
    lowest-ranked ``quota`` are taken, which draws a uniformly random subset of that size.
    """
    b, length = group_id.shape
    keys = torch.rand(b, length, generator=generator, dtype=torch.float64) + group_id
    order = torch.argsort(keys, dim=1)
    sorted_gid = torch.gather(group_id, 1, order)
    counts = torch.zeros_like(quota).scatter_add_(1, group_id, torch.ones_like(group_id))
    starts = torch.cumsum(counts, dim=1) - counts
    rank = torch.arange(length, device=group_id.device) - torch.gather(starts, 1, sorted_gid)
    chosen_sorted = rank < torch.gather(quota, 1, sorted_gid)
    return torch.zeros_like(chosen_sorted).scatter_(1, order, chosen_sorted)


def _proportional(member: torch.Tensor, region: int, region_mask: torch.Tensor, num_masked: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Normal case before the fix-up: region patches plus ``round(|C_g| rho)`` of each other group.

    member: bool [B, 8, L]; region_mask: bool [B, L]. Returns bool [B, L].
    """
    b, num_groups, length = member.shape
    others = [g for g in range(num_groups) if g != region]
    cand = member[:, others] & ~region_mask[:, None]                  # [B, 7, L]
    # Each patch goes to the first other group that contains it; 7 = none (region or no label).
    group_id = torch.full((b, length), len(others), dtype=torch.long, device=member.device)
    for j in reversed(range(len(others))):
        group_id = torch.where(cand[:, j], j, group_id)
    counts = torch.zeros(b, len(others) + 1, dtype=torch.long, device=member.device)
    counts.scatter_add_(1, group_id, torch.ones_like(group_id))
    n_region = region_mask.sum(dim=1)
    rho = (num_masked - n_region).double() / (length - n_region).clamp_min(1).double()
    quota = torch.round(counts.double() * rho[:, None]).long().clamp_min(0)
    quota[:, -1] = 0
    return region_mask | _select_per_group(group_id, quota, generator)


def _fix_up(mask: torch.Tensor, region_mask: torch.Tensor, num_masked: int,
            generator: torch.Generator | None) -> torch.Tensor:
    """Mask (or unmask) random non-region patches until exactly ``num_masked`` are masked."""
    diff = num_masked - mask.sum(dim=1)
    # group 0: unmasked (candidates to mask), 1: masked non-region (to unmask), 2: region (fixed)
    group_id = torch.where(region_mask, 2, torch.where(mask, 1, 0))
    quota = torch.stack([diff.clamp_min(0), (-diff).clamp_min(0), torch.zeros_like(diff)], dim=1)
    return mask ^ _select_per_group(group_id, quota, generator)


def crfrp_masks(maps: torch.Tensor, patch_size: int, mask_ratio: float, region: int | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """CRFR-P masks for a batch of parsing maps.

    maps: [B, H, W] or [B, 1, H, W] LaPa labels. ``region`` forces the covered group (index into
    ``REGION_GROUPS``, < 6); by default it is drawn at random. Returns ``(img_mask, sfr_mask,
    region)``: float [B, L] (1 = masked) with exactly ``num_masked_patches(L, mask_ratio)`` ones
    per row, and the (possibly shrunk) region mask, float [B, L].
    """
    member = group_membership(patch_label_bits(maps, patch_size))
    length = member.shape[-1]
    num_masked = num_masked_patches(length, mask_ratio)
    if region is None:
        region = int(torch.randint(NUM_CHOOSABLE_REGIONS, (1,), generator=generator))
    elif not 0 <= region < NUM_CHOOSABLE_REGIONS:
        raise ValueError(f"region must be in 0..{NUM_CHOOSABLE_REGIONS - 1}, got {region}")
    region_mask = member[:, region]
    normal = _fix_up(_proportional(member, region, region_mask, num_masked, generator),
                     region_mask, num_masked, generator)
    extreme = (region_mask.sum(dim=1) >= num_masked)[:, None]
    if not bool(extreme.any()):
        return normal.float(), region_mask.float(), region
    # Extreme case: the region alone reaches M; keep M random region patches masked.
    quota = torch.zeros(len(region_mask), 2, dtype=torch.long, device=region_mask.device)
    quota[:, 0] = num_masked
    kept = _select_per_group((~region_mask).long(), quota, generator)
    return (torch.where(extreme, kept, normal).float(), torch.where(extreme, kept, region_mask).float(),
            region)


class CRFRPCollate:
    """Collate ``{'image', 'parsing_map'}`` samples and add CRFR-P masks.

    Returns ``{'image': [B,3,S,S] (the samples' dtype: uint8 from ``PretrainTransform``), 'img_mask':
    [B,L], 'specific_facial_region_mask': [B,L], 'region': long scalar}`` (masks float, 1 = masked).
    A picklable object, so DataLoader workers can use it under any start method.
    """

    def __init__(self, input_size: int = 224, patch_size: int = 16, mask_ratio: float = 0.75) -> None:
        if input_size % patch_size:
            raise UsageError(f"--input_size {input_size} is not a multiple of --patch_size {patch_size}")
        if not 0.0 <= mask_ratio < 1.0:
            raise UsageError(f"--mask_ratio must be in [0, 1), got {mask_ratio}; e.g. --mask_ratio 0.75")
        self.input_size, self.patch_size, self.mask_ratio = input_size, patch_size, mask_ratio

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = torch.stack([s["image"] for s in samples])
        maps = torch.stack([s["parsing_map"] for s in samples])
        if maps.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"parsing maps are {tuple(maps.shape[-2:])}, expected {self.input_size}^2")
        img_mask, sfr_mask, region = crfrp_masks(maps, self.patch_size, self.mask_ratio)
        return {"image": images, "img_mask": img_mask, "specific_facial_region_mask": sfr_mask,
                "region": torch.tensor(region)}
