"""CRFR-P masking (spec 3.3) on generated LaPa-style parsing maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fsvfm.masking import (
    FACE_BOUNDARY,
    REGION_GROUPS,
    CRFRPCollate,
    crfrp_masks,
    group_membership,
    num_masked_patches,
    patch_label_bits,
)
from fsvfm.registry import create_model
from tools.synthetic_data import synthetic_parsing_maps

HAIR, EYES = 5, 1


def reference_membership(label_map: np.ndarray, patch: int) -> np.ndarray:
    """Naive per-patch loop: bool [8, L] group membership (spec 3.3 rule)."""
    g = label_map.shape[0] // patch
    out = np.zeros((len(REGION_GROUPS), g * g), dtype=bool)
    for r in range(g):
        for c in range(g):
            present = set(np.unique(label_map[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]).tolist())
            for k, (_, labels) in enumerate(REGION_GROUPS):
                out[k, r * g + c] = bool(present & set(labels))
            out[FACE_BOUNDARY, r * g + c] = bool(present & {0, 10}) and 1 in present
    return out


@pytest.fixture(scope="module")
def maps224() -> torch.Tensor:
    return torch.from_numpy(synthetic_parsing_maps(32, 224, seed=1))


def test_membership_matches_naive_reference(maps224):
    member = group_membership(patch_label_bits(maps224[:6], 16))
    for i in range(6):
        np.testing.assert_array_equal(member[i].numpy(), reference_membership(maps224[i].numpy(), 16))


def test_membership_with_odd_patch_and_int8_channel_maps():
    maps = torch.from_numpy(synthetic_parsing_maps(3, 196, seed=2).astype(np.int8))[:, None]  # [B,1,H,W]
    member = group_membership(patch_label_bits(maps, 14))
    for i in range(3):
        np.testing.assert_array_equal(member[i].numpy(), reference_membership(maps[i, 0].numpy(), 14))


def test_face_boundary_rule():
    m = torch.zeros(1, 2, 4, dtype=torch.uint8)  # patch size 2 -> two patches
    m[0, :, :2] = 10      # patch 0: hair only
    m[0, :, 2:] = 10
    m[0, 0, 3] = 1        # patch 1: hair + skin
    member = group_membership(patch_label_bits(m, 2))[0]
    assert member[FACE_BOUNDARY].tolist() == [False, True]
    assert member[5].tolist() == [True, True] and member[6].tolist() == [False, True]


@pytest.mark.parametrize("region", range(6))
def test_exact_count_and_region_covered_224(maps224, region):
    img_mask, sfr_mask, chosen = crfrp_masks(maps224, 16, 0.75, region=region)
    assert chosen == region and img_mask.shape == (32, 196) and img_mask.dtype == torch.float32
    assert img_mask.sum(dim=1).tolist() == [147.0] * 32
    member = group_membership(patch_label_bits(maps224, 16))[:, region]
    normal = member.sum(dim=1) < 147
    # normal case: every patch of the chosen region is masked and the region mask is unchanged
    assert torch.equal(sfr_mask[normal].bool(), member[normal])
    assert bool((img_mask[normal] >= sfr_mask[normal]).all())


def test_exact_count_many_random_maps_and_ratios():
    maps = torch.from_numpy(synthetic_parsing_maps(200, 64, seed=3))
    gen = torch.Generator().manual_seed(0)
    for ratio in (0.75, 0.5, 0.6, 0.9, 0.33):
        img_mask, sfr_mask, _ = crfrp_masks(maps, 8, ratio, generator=gen)
        expected = num_masked_patches(64, ratio)
        assert expected == round(ratio * 64)
        assert set(img_mask.sum(dim=1).long().tolist()) == {expected}
        assert bool((img_mask >= sfr_mask).all())


def test_encoder_keeps_exactly_the_unmasked_patches():
    """P8: for a fractional r*L the encoder must drop exactly the collate's masked patches."""
    model = create_model("fsfm_vit_small_patch16", img_size=40, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                         rep_decoder_depth=1, rep_decoder_num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                         decoder_num_heads=2, projection_hidden_size=16)
    maps = torch.from_numpy(synthetic_parsing_maps(4, 40, seed=4))
    img_mask, _, _ = crfrp_masks(maps, 8, 0.7)  # L = 25, r*L = 17.5 -> 18 masked (half to even)
    assert set(img_mask.sum(dim=1).tolist()) == {18.0}
    latent, _ = model.forward_encoder(torch.randn(4, 3, 40, 40), img_mask, 0.7)
    assert latent.shape[1] == 1 + 25 - 18


def test_extreme_case_shrinks_region_mask():
    maps = torch.full((3, 64, 64), 10, dtype=torch.uint8)  # hair everywhere
    maps[:, 40:, 16:48] = 1
    img_mask, sfr_mask, _ = crfrp_masks(maps, 8, 0.75, region=HAIR)
    hair = group_membership(patch_label_bits(maps, 8))[:, HAIR]
    assert int(hair[0].sum()) > 48
    assert img_mask.sum(dim=1).tolist() == [48.0] * 3
    assert torch.equal(img_mask, sfr_mask)
    assert bool((sfr_mask.bool() <= hair).all())


def test_absent_region_gives_zero_region_loss():
    maps = torch.from_numpy(synthetic_parsing_maps(4, 32, seed=5))
    maps[maps == 10] = 0  # no hair anywhere in the batch
    img_mask, sfr_mask, _ = crfrp_masks(maps, 8, 0.75, region=HAIR)
    assert sfr_mask.sum() == 0 and img_mask.sum(dim=1).tolist() == [12.0] * 4
    model = create_model("fsfm_vit_small_patch16", img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                         rep_decoder_depth=1, rep_decoder_num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                         decoder_num_heads=2, projection_hidden_size=16, norm_pix_loss=True)
    loss_all, loss_sfr, *_ = model(torch.randn(4, 3, 32, 32), img_mask, sfr_mask, 0.75)
    assert torch.isfinite(loss_all) and loss_sfr.item() == 0.0


def test_proportional_rounding_half_to_even_in_table_order():
    # 4x4 map, patch 1: eyebrows 1 patch, eyes 3, nose 5, mouth 7 -> rho = 8/16 = 0.5,
    # quotas round(0.5), round(1.5), round(2.5), round(3.5) = 0, 2, 2, 4 (sum 8, no fix-up).
    labels = [2] + [4] * 3 + [6] * 5 + [7] * 7
    maps = torch.tensor(labels, dtype=torch.uint8).view(1, 4, 4).repeat(50, 1, 1)
    img_mask, sfr_mask, _ = crfrp_masks(maps, 1, 0.5, region=HAIR)
    flat = torch.tensor(labels)
    per_group = [int(img_mask[:, flat == lab].sum(dim=1).unique().item()) for lab in (2, 4, 6, 7)]
    assert per_group == [0, 2, 2, 4]
    assert sfr_mask.sum() == 0


def test_patch_counted_in_first_group_of_table_order():
    # every patch holds an eyebrow and an eye pixel; choosing the nose, all patches are "eyebrows"
    maps = torch.zeros(20, 8, 8, dtype=torch.uint8)
    maps[:, 0::2, :] = 2
    maps[:, 1::2, :] = 4
    img_mask, _, _ = crfrp_masks(maps, 2, 0.75, region=2)
    assert img_mask.sum(dim=1).tolist() == [12.0] * 20


def test_other_groups_masked_at_mean_rho():
    maps = torch.from_numpy(synthetic_parsing_maps(1000, 64, seed=6))
    gen = torch.Generator().manual_seed(1)
    masked = torch.zeros(8)
    total = torch.zeros(8)
    rhos = []
    for start in range(0, 1000, 100):
        chunk = maps[start:start + 100]
        img_mask, sfr_mask, region = crfrp_masks(chunk, 8, 0.75, generator=gen)
        member = group_membership(patch_label_bits(chunk, 8))
        n_region = sfr_mask.sum(dim=1)
        normal = n_region < 48
        rhos.append(((48 - n_region) / (64 - n_region))[normal])
        covered = sfr_mask.bool().clone()
        for g in range(8):
            if g == region:
                continue
            own = member[:, g] & ~covered & normal[:, None]
            masked[g] += (img_mask.bool() & own).sum()
            total[g] += own.sum()
            covered |= member[:, g]
    mean_rho = torch.cat(rhos).mean()
    for g in range(8):
        if total[g] > 200:
            assert abs(masked[g] / total[g] - mean_rho) < 0.05, (REGION_GROUPS[g][0], masked[g] / total[g], mean_rho)


def test_seeded_generator_is_reproducible(maps224):
    a = crfrp_masks(maps224, 16, 0.75, generator=torch.Generator().manual_seed(7))
    b = crfrp_masks(maps224, 16, 0.75, generator=torch.Generator().manual_seed(7))
    assert a[2] == b[2] and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_collate_output(maps224):
    samples = [{"image": torch.randn(3, 224, 224), "parsing_map": m[None]} for m in maps224[:4]]
    out = CRFRPCollate(224, 16, 0.75)(samples)
    assert set(out) == {"image", "img_mask", "specific_facial_region_mask", "region"}
    assert out["image"].shape == (4, 3, 224, 224) and out["img_mask"].shape == (4, 196)
    assert out["specific_facial_region_mask"].dtype == torch.float32
    with pytest.raises(ValueError):
        CRFRPCollate(224, 15)
