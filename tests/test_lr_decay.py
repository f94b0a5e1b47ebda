"""Layer-decay parameter groups against hand-computed values (spec 4.7)."""
import pytest
import torch

from fsvfm import models_vit
from fsvfm.util.lr_decay import get_layer_id_for_vit, layer_scales, param_groups_lrd
from fsvfm.util.lr_sched import adjust_learning_rate


def _tiny(**kw):
    return models_vit.create_model("vit_small_patch16", img_size=32, embed_dim=48, depth=2, num_heads=2,
                                   num_classes=2, **kw)


def test_layer_ids():
    assert get_layer_id_for_vit("cls_token", 3) == 0
    assert get_layer_id_for_vit("pos_embed", 3) == 0
    assert get_layer_id_for_vit("patch_embed.proj.weight", 3) == 0
    assert get_layer_id_for_vit("blocks.0.attn.qkv.weight", 3) == 1
    assert get_layer_id_for_vit("blocks.1.norm1.bias", 3) == 2
    assert get_layer_id_for_vit("fc_norm.weight", 3) == 3
    assert get_layer_id_for_vit("head.bias", 3) == 3


def test_groups_and_scales_hand_computed():
    model = _tiny()
    groups = param_groups_lrd(model, weight_decay=0.03, layer_decay=0.5)
    by_name = {g["name"]: g for g in groups}
    # depth 2 -> n_layers 3, scales 0.5^3, 0.5^2, 0.5^1, 0.5^0
    assert layer_scales(3, 0.5) == [0.125, 0.25, 0.5, 1.0]
    expected = {"layer_0_no_decay": 0.125, "layer_0_decay": 0.125, "layer_1_no_decay": 0.25,
                "layer_1_decay": 0.25, "layer_2_no_decay": 0.5, "layer_2_decay": 0.5,
                "layer_3_no_decay": 1.0, "layer_3_decay": 1.0}
    assert {k: g["lr_scale"] for k, g in by_name.items()} == expected
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: sorted(names[id(p)] for p in g["params"]) for k, g in by_name.items()}
    assert members["layer_0_no_decay"] == ["cls_token", "patch_embed.proj.bias", "pos_embed"]
    assert members["layer_0_decay"] == ["patch_embed.proj.weight"]
    assert members["layer_3_decay"] == ["head.weight"]
    assert members["layer_3_no_decay"] == ["fc_norm.bias", "fc_norm.weight", "head.bias"]
    assert by_name["layer_1_decay"]["weight_decay"] == 0.03
    assert by_name["layer_1_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_skipped_and_zero_decay():
    model = _tiny()
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("head")
    groups = param_groups_lrd(model, layer_decay=0.0)
    assert [g["name"] for g in groups] == ["layer_3_decay", "layer_3_no_decay"]
    assert all(g["lr_scale"] == 1.0 for g in groups)  # 0 ** 0 == 1


def test_wrapped_model_and_schedule_scales():
    model = _tiny()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    groups = param_groups_lrd(Wrapper(model), layer_decay=0.5)
    opt = torch.optim.AdamW(groups, lr=1.0)

    class A:
        lr, min_lr, warmup_epochs, epochs = 1e-3, 0.0, 2, 10

    base = adjust_learning_rate(opt, 1.0, A)
    assert base == pytest.approx(5e-4)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["layer_0_decay"] == pytest.approx(5e-4 * 0.125)
    assert lrs["layer_3_decay"] == pytest.approx(5e-4)
