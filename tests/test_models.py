"""Networks: factories, parameter names/shapes vs the original, numerics of the forward pass."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fsvfm import models_fsfm, models_vit
from fsvfm.registry import create_model
from fsvfm.util.pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed
from tests.helpers import TINY_FSFM, TINY_VIT

FSFM_NAMES = ["fsfm_vit_small_patch16", "fsfm_vit_base_patch16", "fsfm_vit_large_patch16",
              "fsfm_vit_huge_patch14"]
VIT_NAMES = ["vit_small_patch16", "vit_base_patch16", "vit_large_patch16", "vit_huge_patch14"]


def _tiny_fsfm(name: str, **kw) -> dict:
    cfg = dict(TINY_FSFM, **kw)
    if name.endswith("patch14"):
        cfg.update(img_size=28, patch_size=14)
    return cfg


def _masks(n: int, length: int, n_masked: int, n_region: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img_mask = torch.zeros(n, length)
    sfr = torch.zeros(n, length)
    for i in range(n):
        perm = torch.randperm(length, generator=g)
        img_mask[i, perm[:n_masked]] = 1
        sfr[i, perm[:n_region]] = 1
    return img_mask, sfr


@pytest.mark.parametrize("name", FSFM_NAMES)
def test_online_factory_forward_backward_every_param_gets_grad(name):
    factory = getattr(models_fsfm, name)
    cfg = _tiny_fsfm(name)
    model = factory(**cfg)
    length = (cfg["img_size"] // cfg["patch_size"]) ** 2
    x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"])
    img_mask, sfr = _masks(2, length, n_masked=3 * length // 4, n_region=2)
    loss_all, loss_sfr, feat, pred, mask_out = model(x, img_mask, sfr, 0.75)
    assert feat.shape == (2, cfg["projection_size"])
    assert torch.allclose(feat.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert pred.shape == (2, length, cfg["patch_size"] ** 2 * 3)
    assert torch.equal(mask_out, img_mask)
    (loss_all + loss_sfr + feat.sum()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trainable == with_grad
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "rep_decoder_pos_embed", "decoder_pos_embed"}


@pytest.mark.parametrize("name", FSFM_NAMES)
def test_target_factory_forward_backward(name):
    cfg = _tiny_fsfm(name)
    target = models_fsfm.vit_target_network(name, **cfg)
    x = torch.randn(3, 3, cfg["img_size"], cfg["img_size"])
    z = target(x)
    assert z.shape == (3, cfg["projection_size"])
    z.sum().backward()
    trainable = {n for n, p in target.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in target.named_parameters() if p.grad is not None}
    assert trainable - with_grad == {"mask_token"}  # the full view has no masked token to fill
    assert not hasattr(target, "predictor") and not hasattr(target, "decoder_blocks")


@pytest.mark.parametrize("name", VIT_NAMES)
@pytest.mark.parametrize("global_pool", [True, False])
def test_vit_factory_forward_backward(name, global_pool):
    cfg = dict(TINY_VIT, img_size=28, patch_size=14) if name.endswith("14") else dict(TINY_VIT)
    model = getattr(models_vit, name)(num_classes=2, drop_path_rate=0.1, global_pool=global_pool, **cfg)
    x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"])
    out = model(x)
    assert out.shape == (2, 2)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    keys = set(model.state_dict())
    assert ("fc_norm.weight" in keys) == global_pool and ("norm.weight" in keys) != global_pool


def test_unknown_model_names_raise():
    with pytest.raises(ValueError, match="unknown pre-training model"):
        models_fsfm.vit_target_network("vit_tiny")
    with pytest.raises(ValueError, match="unknown classifier"):
        create_model("fsfm_vit_base_patch16", family="classifier")
    with pytest.raises(ValueError, match="must equal embed_dim"):
        models_fsfm.FSFMViT(embed_dim=48, rep_decoder_embed_dim=32, num_heads=2, depth=1)


def _shapes(model) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_full_size_state_dicts_match_reference_fixture(shared_dir):
    ref = json.loads((shared_dir / "fixtures" / "reference_state_dict_shapes.json").read_text())
    checked = 0
    with torch.device("meta"):
        for name in FSFM_NAMES:
            assert _shapes(create_model(name)) == ref[name]
            assert _shapes(models_fsfm.vit_target_network(name)) == ref[f"{name}:target"]
            assert _shapes(getattr(models_fsfm, f"{name}_dec512d8b")()) == ref[name]
            checked += 3
        for name in VIT_NAMES:
            for gp in (True, False):
                model = create_model(name, num_classes=2, global_pool=gp)
                assert _shapes(model) == ref[f"{name}:global_pool={gp}"]
                checked += 1
    assert checked == 20


def test_parameter_order_matches_original_registration():
    names = [n for n, _ in create_model("fsfm_vit_small_patch16", **TINY_FSFM).named_parameters()]
    tops = list(dict.fromkeys(n.split(".")[0] for n in names))
    assert tops == ["cls_token", "pos_embed", "mask_token", "rep_decoder_pos_embed", "decoder_pos_embed",
                    "patch_embed", "blocks", "norm", "projector", "predictor", "rep_decoder_embed",
                    "rep_decoder_blocks", "rep_decoder_norm", "rep_decoder_pred", "decoder_embed",
                    "decoder_blocks", "decoder_norm", "decoder_pred"]


def test_online_to_target_copy_gives_identical_full_view_projection():
    online = create_model("fsfm_vit_small_patch16", **TINY_FSFM)
    target = models_fsfm.vit_target_network("fsfm_vit_small_patch16", **TINY_FSFM)
    assert target.rep_decoder_pos_embed.abs().sum() > 0  # target's own init is sin-cos
    result = target.load_state_dict(online.state_dict(), strict=False)
    assert result.missing_keys == []
    assert {k.split(".")[0] for k in result.unexpected_keys} == {
        "decoder_pos_embed", "predictor", "decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred"}
    assert torch.count_nonzero(target.rep_decoder_pos_embed) == 0  # online's is never initialised
    x = torch.randn(2, 3, 32, 32)
    online.eval()
    target.eval()
    with torch.no_grad():
        latent, ids = online.forward_encoder(x, None, 0.0)
        expected = F.normalize(online.global_projection(latent, ids), dim=-1)
        assert torch.allclose(target(x), expected, atol=1e-6)
        # A mask that hides nothing (mask_ratio 0) keeps every token and changes nothing.
        assert torch.allclose(target(x, torch.zeros(2, 16), None, 0.0), expected, atol=1e-5)


def test_patchify_layout_and_unpatchify_round_trip():
    model = create_model("fsfm_vit_small_patch16", **TINY_FSFM)  # P = 8, G = 4
    imgs = torch.randn(2, 3, 32, 32)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    # Patch (row 1, col 2) = index 6; inside it, value k = (y * 8 + x) * 3 + c.
    y, x, c = 5, 3, 2
    assert patches[1, 1 * 4 + 2, (y * 8 + x) * 3 + c] == imgs[1, c, 8 + y, 16 + x]
    assert torch.equal(model.unpatchify(patches), imgs)
    with pytest.raises(ValueError, match="divisible"):
        model.patchify(torch.randn(1, 3, 30, 30))


def test_sincos_table_values_by_hand():
    table = get_2d_sincos_pos_embed(8, 3, cls_token=True)
    assert table.shape == (10, 8) and table.dtype.name == "float32"
    assert (table[0] == 0).all()
    # Position index 1 + (row 2 * 3 + col 1): x = 1 in channels 0..3, y = 2 in channels 4..7.
    row = table[1 + 2 * 3 + 1]
    omega = [1.0, 0.01]  # 1 / 10000^(k / 2) for k = 0, 1 (each half is a 1-D table of width 4)
    expected = [math.sin(1 * omega[0]), math.sin(1 * omega[1]), math.cos(1 * omega[0]), math.cos(1 * omega[1]),
                math.sin(2 * omega[0]), math.sin(2 * omega[1]), math.cos(2 * omega[0]), math.cos(2 * omega[1])]
    assert row.tolist() == pytest.approx(expected, abs=1e-6)


def test_interpolate_pos_embed_changes_grid_and_keeps_cls():
    model = create_model("vit_small_patch16", num_classes=2, **dict(TINY_VIT, img_size=48))
    state = {"pos_embed": torch.randn(1, 1 + 16, 48)}
    cls = state["pos_embed"][:, :1].clone()
    interpolate_pos_embed(model, state)
    assert state["pos_embed"].shape == (1, 1 + 36, 48)
    assert torch.equal(state["pos_embed"][:, :1], cls)
    same = {"pos_embed": torch.randn(1, 37, 48)}
    before = same["pos_embed"].clone()
    interpolate_pos_embed(model, same)
    assert torch.equal(same["pos_embed"], before)


def test_region_absent_from_whole_batch_gives_zero_region_loss():
    model = create_model("fsfm_vit_small_patch16", **TINY_FSFM)
    img_mask, _ = _masks(2, 16, 12, 0)
    loss_all, loss_sfr, *_ = model(torch.randn(2, 3, 32, 32), img_mask, torch.zeros(2, 16), 0.75)
    assert torch.isfinite(loss_all) and loss_sfr.item() == 0.0


# --------------------------------------------------------------------------- kept patches from the mask
@pytest.mark.parametrize("n_masked", [12, 5])
def test_kept_count_comes_from_the_mask(n_masked):
    model = create_model("fsfm_vit_small_patch16", **TINY_FSFM).eval()
    img_mask, sfr = _masks(3, 16, n_masked, 2, seed=n_masked)
    with torch.no_grad():
        latent, ids_restore = model.forward_encoder(torch.randn(3, 3, 32, 32), img_mask)
        assert latent.shape == (3, 1 + 16 - n_masked, 48) and ids_restore.shape == (3, 16)
        loss_all, _, _, pred, mask_out = model(torch.randn(3, 3, 32, 32), img_mask, sfr * img_mask)
    assert torch.isfinite(loss_all) and pred.shape == (3, 16, 8 * 8 * 3) and torch.equal(mask_out, img_mask)
    assert models_fsfm.kept_patches(img_mask, 16) == 16 - n_masked and models_fsfm.kept_patches(None, 16) == 16


def test_rows_masking_different_counts_are_refused():
    model = create_model("fsfm_vit_small_patch16", **TINY_FSFM)
    img_mask, sfr = _masks(2, 16, 12, 2)
    img_mask[1, torch.nonzero(img_mask[1]).flatten()[0]] = 0  # row 1 masks 11
    with pytest.raises(ValueError, match="same number of patches, got 11 to 12 of 16"):
        model(torch.randn(2, 3, 32, 32), img_mask, sfr)
    with pytest.raises(ValueError, match=r"img_mask must be \[N, 16\]"):
        model.forward_encoder(torch.randn(2, 3, 32, 32), torch.zeros(2, 15))


def test_a_mask_ratio_disagreeing_with_the_mask_is_refused():
    model = create_model("fsfm_vit_small_patch16", **TINY_FSFM)
    img_mask, sfr = _masks(2, 16, 12, 2)
    imgs = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="mask_ratio 0.5 masks 8 of 16 patches but img_mask masks 12"):
        model(imgs, img_mask, sfr, mask_ratio=0.5)
    with pytest.raises(ValueError, match="mask_ratio 0.0 masks 0 of 16"):
        model.forward_encoder(imgs, img_mask, 0.0)
    assert torch.isfinite(model(imgs, img_mask, sfr, mask_ratio=0.75)[0])  # 12 of 16: agrees


def _old_ratio_forward(m, imgs, img_mask, sfr, mask_ratio):
    """The forward pass as it was before the count came from the mask: K = L - round(L * mask_ratio)."""
    x = m.patch_embed(imgs) + m.pos_embed[:, 1:, :]
    n, length, d = x.shape
    len_keep = length - round(length * mask_ratio)
    ids_shuffle = torch.argsort(img_mask, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).expand(-1, -1, d))
    x = torch.cat([(m.cls_token + m.pos_embed[:, :1, :]).expand(n, -1, -1), x], dim=1)
    for blk in m.blocks:
        x = blk(x)
    latent = m.norm(x)
    feat = F.normalize(m.predictor(m.global_projection(latent, ids_restore)), dim=-1)
    pred = m.forward_decoder(latent, ids_restore)
    return (*m.forward_loss(imgs, pred, img_mask, sfr), feat, pred)


def test_cpu_mask_gives_exactly_the_old_ratio_path_losses():
    """The collate's CPU mask read by the model (no ratio given) gives bit-identical losses, features and
    predictions to the old path that derived K from the ratio (L = 25, r = 0.7: 18 masked, 7 kept)."""
    torch.manual_seed(0)
    model = create_model("fsfm_vit_small_patch16", norm_pix_loss=True, **dict(TINY_FSFM, img_size=40)).eval()
    img_mask, sfr = _masks(3, 25, 18, 4, seed=2)
    sfr = sfr * img_mask
    imgs = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        got = model(imgs, img_mask, sfr)
        old = _old_ratio_forward(model, imgs, img_mask, sfr, 0.7)
    assert img_mask.device.type == "cpu" and got[4].device == next(model.parameters()).device
    for g, o in zip(got[:4], old):
        assert torch.equal(g, o)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_cpu_mask_is_read_without_a_device_sync():
    model = create_model("fsfm_vit_small_patch16", **TINY_FSFM).cuda()
    img_mask, sfr = _masks(2, 16, 12, 2)
    imgs, sfr = torch.randn(2, 3, 32, 32, device="cuda"), sfr.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(imgs, img_mask.pin_memory(), sfr)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out[4].is_cuda and torch.equal(out[4].cpu(), img_mask)


# --------------------------------------------------------------------------- reference numerics
def _ref_block(blk, x, heads):
    """Pre-norm block of spec 3.4 written out by hand: x + Attn(LN1 x); x + MLP(LN2 x)."""
    n, t, d = x.shape
    h = F.layer_norm(x, (d,), blk.norm1.weight, blk.norm1.bias, 1e-6)
    qkv = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
    o = (attn @ v).transpose(1, 2).reshape(n, t, d)
    x = x + o @ blk.attn.proj.weight.T + blk.attn.proj.bias
    h = F.layer_norm(x, (d,), blk.norm2.weight, blk.norm2.bias, 1e-6)
    h = F.gelu(h @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
    return x + h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def _ref_ln(mod, x):
    return F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)


def _ref_mlp(head, x):
    lin0, ln, _, lin3 = head.projection_head
    h = torch.relu(_ref_ln(ln, x @ lin0.weight.T + lin0.bias))
    return h @ lin3.weight.T + lin3.bias


def _reference_online_forward(m, imgs, img_mask, sfr, heads):
    """Spec 3.7 step by step, with per-sample loops instead of gathers."""
    n = imgs.shape[0]
    p = m.patch_embed.proj
    tok = F.conv2d(imgs, p.weight, p.bias, stride=p.stride).flatten(2).transpose(1, 2) + m.pos_embed[:, 1:]
    length, d = tok.shape[1:]
    keep = [torch.nonzero(img_mask[i] == 0).flatten() for i in range(n)]
    x = torch.stack([torch.cat([m.cls_token[0] + m.pos_embed[0, :1], tok[i, keep[i]]]) for i in range(n)])
    for blk in m.blocks:
        x = _ref_block(blk, x, heads)
    latent = _ref_ln(m.norm, x)

    def scatter_back(t):  # cls first, kept tokens back in place, mask token elsewhere
        out = m.mask_token.expand(n, length + 1, t.shape[-1]).clone()
        for i in range(n):
            out[i, 0] = t[i, 0]
            out[i, 1 + keep[i]] = t[i, 1:]
        return out

    r = scatter_back(latent @ m.rep_decoder_embed.weight.T + m.rep_decoder_embed.bias) + m.rep_decoder_pos_embed
    for blk in m.rep_decoder_blocks:
        r = _ref_block(blk, r, 2)
    r = _ref_ln(m.rep_decoder_norm, r) @ m.rep_decoder_pred.weight.T + m.rep_decoder_pred.bias
    feat = F.normalize(_ref_mlp(m.predictor, _ref_mlp(m.projector, r.mean(dim=1))), dim=-1)
    y = scatter_back(latent) @ m.decoder_embed.weight.T + m.decoder_embed.bias + m.decoder_pos_embed
    for blk in m.decoder_blocks:
        y = _ref_block(blk, y, 2)
    pred = (_ref_ln(m.decoder_norm, y) @ m.decoder_pred.weight.T + m.decoder_pred.bias)[:, 1:]
    t = m.patchify(imgs)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    err = ((pred - t) ** 2).mean(-1)
    return (err * img_mask).sum() / img_mask.sum(), (err * sfr).sum() / sfr.sum(), feat, pred


def test_online_forward_matches_hand_written_reference():
    model = create_model("fsfm_vit_small_patch16", norm_pix_loss=True, **TINY_FSFM).eval()
    with torch.no_grad():
        model.rep_decoder_pos_embed.normal_()  # make the (normally zero) table matter in the check
    imgs = torch.randn(3, 3, 32, 32)
    img_mask, sfr = _masks(3, 16, 12, 3, seed=1)
    sfr = sfr * img_mask
    with torch.no_grad():
        got = model(imgs, img_mask, sfr, 0.75)
        ref = _reference_online_forward(model, imgs, img_mask, sfr, heads=2)
    for g, r in zip(got[:4], ref):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-5)
