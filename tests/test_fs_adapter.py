"""FS-Adapter: model names/shapes vs the original, forward contract, init, trainable modules, one CPU step."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsvfm import models_vit
from fsvfm.losses import RealAnchorConLoss
from fsvfm.registry import create_model, list_models
from fsvfm.util.trainable import apply_trainable_modules, count_parameters
from tests.helpers import TINY_VIT

SIZES = ["vit_small_patch16", "vit_base_patch16", "vit_large_patch16", "vit_huge_patch14"]
ADAPTER_NAMES = [f"{s}_fs_adapter" for s in SIZES]
NEW = ("adapter.", "projector.", "head.")


def _tiny(name: str = "vit_small_patch16_fs_adapter", **kw) -> models_vit.FSAdapterViT:
    return create_model(name, **{**TINY_VIT, "num_classes": 2, **kw})


def test_adapter_models_are_registered_classifiers():
    assert list_models("*_fs_adapter", family="classifier") == sorted(ADAPTER_NAMES)


def test_full_size_state_dicts_match_reference_fixture(shared_dir):
    ref = json.loads((shared_dir / "fixtures" / "reference_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        for name in SIZES:
            model = create_model(f"{name}_fs_adapter", num_classes=2)
            assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref[f"{name}:fs_adapter"]


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_forward_contract_both_modes(name):
    model = _tiny(name).eval()  # patch 8 for every size: the tiny config overrides the size
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        logits_t, proj = model(x, training=True)
        h = model.forward_pooled(x)
        b = F.relu(h @ model.adapter.linear1.weight.T)
        a = F.relu(b @ model.adapter.linear2.weight.T)
        expected = torch.cat([h, a], dim=-1) @ model.head.weight.T + model.head.bias
        expected_proj = F.normalize(b @ model.projector.weight.T + model.projector.bias, dim=-1)
    assert logits.shape == (3, 2) and proj.shape == (3, 48 // 4)
    assert torch.equal(logits, logits_t)
    assert torch.allclose(logits, expected, atol=1e-6) and torch.allclose(proj, expected_proj, atol=1e-6)
    assert torch.allclose(proj.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_reduction_cls_token_and_headless_variants():
    model = _tiny(adapter_reduction=8, global_pool=False, num_classes=0)
    keys = set(model.state_dict())
    assert "norm.weight" in keys and "fc_norm.weight" not in keys and "head.weight" not in keys
    logits, proj = model(torch.randn(2, 3, 32, 32), training=True)
    assert logits.shape == (2, 2 * 48) and proj.shape == (2, 6)
    assert model.adapter.linear1.weight.shape == (6, 48) and model.projector.weight.shape == (6, 6)
    with pytest.raises(ValueError, match="adapter_reduction"):
        _tiny(adapter_reduction=5)


def test_new_layers_keep_pytorch_default_init_after_timm_init():
    torch.manual_seed(7)
    model = _tiny()
    torch.manual_seed(7)  # same RNG stream: timm builds and inits the encoder, then the new layers follow
    base = create_model("vit_small_patch16", **{**TINY_VIT, "num_classes": 2})
    ref = {"adapter.linear1": nn.Linear(48, 12, bias=False), "adapter.linear2": nn.Linear(12, 48, bias=False),
           "projector": nn.Linear(12, 12), "head": nn.Linear(96, 2)}
    state = model.state_dict()
    for key, value in base.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(state[key], value), key
    for prefix, layer in ref.items():
        for key, value in layer.state_dict().items():
            assert torch.equal(state[f"{prefix}.{key}"], value), prefix
    assert model.head.bias.abs().min() > 0  # uniform, not timm's zero


def test_trainable_modules_rules_and_counts():
    model = _tiny()
    total = count_parameters(model).total
    count = apply_trainable_modules(model, "fs-adapter")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter.linear1.weight", "adapter.linear2.weight", "projector.weight", "projector.bias",
                         "head.weight", "head.bias"}
    # D = 48, D/r = 12: 2 * 48 * 12 + (12 * 12 + 12) + (2 * 96 + 2)
    assert (count.trainable, count.total) == (2 * 48 * 12 + 156 + 194, total)
    assert apply_trainable_modules(model, "fs-adapter", train_fc_norm=True).trainable == count.trainable + 96
    assert apply_trainable_modules(model, "fs-adapter-fas").trainable == count.trainable - 194
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable - {"head.weight", "head.bias"}
    fresh = _tiny()
    assert apply_trainable_modules(fresh, "all").trainable == total
    with pytest.raises(ValueError, match="choose from all, fs-adapter"):
        apply_trainable_modules(model, "adapter")


def test_base_size_trainable_count_by_hand():
    with torch.device("meta"):
        model = create_model("vit_base_patch16_fs_adapter", num_classes=2)
    count = apply_trainable_modules(model, "fs-adapter")
    assert count.trainable == 2 * 768 * 192 + 192 * 192 + 192 + 2 * 1536 + 2


def test_fs_adapter_step_changes_only_adapter_projector_head():
    model = _tiny(drop_path_rate=0.1).train()
    apply_trainable_modules(model, "fs-adapter")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n.startswith(NEW)}
    labels = torch.tensor([1, 0, 1, 1, 0, 0])
    logits, proj = model(torch.randn(6, 3, 32, 32), training=True)
    con = RealAnchorConLoss(pos_class_index=1)(proj[:, None], labels)
    loss = F.cross_entropy(logits, labels) + 0.1 * con
    loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith(NEW):
            assert not torch.equal(p, before[name]), name
        else:
            assert p.grad is None and torch.equal(p, before[name]), name
