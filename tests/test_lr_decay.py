"""Layer-decay parameter groups (timm's ``param_groups_layer_decay`` over our ``group_matcher``)
against the hand-computed groups of the BEiT / MAE rule (spec 4.7)."""
import pytest
import torch

from fsvfm.finetune_setup import layer_decay_groups
from fsvfm.registry import create_model
from fsvfm.util.lr_sched import lr_at, set_learning_rate


def _tiny(**kw):
    return create_model("vit_small_patch16", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                        num_classes=2, **kw)


def _members(model, groups) -> dict[tuple[float, float], list[str]]:
    """(lr_scale, weight_decay) -> sorted parameter names."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[tuple[float, float], list[str]] = {}
    for g in groups:
        out.setdefault((g["lr_scale"], g["weight_decay"]), []).extend(names[id(p)] for p in g["params"])
    return {k: sorted(v) for k, v in out.items()}


def _block(i: int, kind: str) -> list[str]:
    weights = ["attn.proj.weight", "attn.qkv.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
    biases = ["attn.proj.bias", "attn.qkv.bias", "mlp.fc1.bias", "mlp.fc2.bias", "norm1.bias", "norm1.weight",
              "norm2.bias", "norm2.weight"]
    return [f"blocks.{i}.{n}" for n in (weights if kind == "decay" else biases)]


@pytest.mark.parametrize("global_pool,top_norm", [(True, "fc_norm"), (False, "norm")])
def test_groups_and_scales_hand_computed(global_pool, top_norm):
    # depth 2 -> layer ids 0 (stem), 1, 2 (blocks), 3 (top); scales 0.5^3, 0.5^2, 0.5^1, 0.5^0
    model = _tiny(global_pool=global_pool)
    groups = layer_decay_groups(model, weight_decay=0.03, layer_decay=0.5)
    assert _members(model, groups) == {
        (0.125, 0.0): ["cls_token", "patch_embed.proj.bias", "pos_embed"],
        (0.125, 0.03): ["patch_embed.proj.weight"],
        (0.25, 0.0): _block(0, "no_decay"), (0.25, 0.03): _block(0, "decay"),
        (0.5, 0.0): _block(1, "no_decay"), (0.5, 0.03): _block(1, "decay"),
        (1.0, 0.0): sorted(["head.bias", f"{top_norm}.bias", f"{top_norm}.weight"]),
        (1.0, 0.03): ["head.weight"],
    }
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_new_modules_join_their_layer():
    model = _tiny()
    model.blocks[0].adapter = torch.nn.Linear(48, 4, bias=False)  # inside block 0 -> layer 1
    model.projector = torch.nn.Linear(4, 4)  # outside the blocks -> top layer
    members = _members(model, layer_decay_groups(model, weight_decay=0.03, layer_decay=0.5))
    assert "blocks.0.adapter.weight" in members[(0.25, 0.03)]
    assert {"projector.weight"} <= set(members[(1.0, 0.03)]) and "projector.bias" in members[(1.0, 0.0)]


def test_frozen_skipped_and_zero_decay():
    model = _tiny()
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("head")
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.0)
    assert _members(model, groups) == {(1.0, 0.05): ["head.weight"], (1.0, 0.0): ["head.bias"]}  # 0 ** 0 == 1


def test_wrapped_model_and_schedule_scales():
    model = _tiny()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    groups = layer_decay_groups(Wrapper(model), weight_decay=0.05, layer_decay=0.5)
    opt = torch.optim.AdamW(groups, lr=1.0)

    class A:
        lr, min_lr, warmup_epochs, epochs = 1e-3, 0.0, 2, 10

    base = set_learning_rate(opt, lr_at(1.0, A))
    assert base == pytest.approx(5e-4)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([5e-4 * 0.125, 5e-4 * 0.25, 5e-4 * 0.5, 5e-4])
