"""FAS network (spec 6.4): parameter names/shapes of the original, forward numerics, alias loading."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fsvfm.models_fas import add_embedder_aliases, create_fas_model
from fsvfm.registry import list_models, model_family
from tests.helpers import TINY_VIT


def _tiny(**kw):
    return create_fas_model("vit_small_patch16", **TINY_VIT, **kw)


def test_fixture_names_and_shapes_for_s_b_l(shared_dir):
    ref = json.loads((shared_dir / "fixtures" / "reference_fas_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        for name in ("vit_small_patch16", "vit_base_patch16", "vit_large_patch16"):
            shapes = {k: list(v.shape) for k, v in create_fas_model(name).state_dict().items()}
            assert shapes == ref[f"fas:{name}"]


def test_registry_family_and_huge_builds():
    assert list_models(family="fas") == [f"fas_vit_{s}{a}" for s in ("base_patch16", "huge_patch14", "large_patch16",
                                                                      "small_patch16") for a in ("", "_fs_adapter")]
    assert model_family("fas_vit_small_patch16") == "fas"
    with torch.device("meta"):   # S3: the original's name map made huge raise ValueError
        model = create_fas_model("vit_huge_patch14")
    assert model.embedder.bottleneck_layer_fc.weight.shape == (512, 1280)


def test_forward_shapes_and_token0_is_pooled_feature():
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    logits, emb = model(x)
    assert logits.shape == (2, 17, 2) and emb.shape == (2, 17, 512)
    vit = model.backbone.vit
    tokens = vit.forward_features(x)
    feats = model.backbone(x)
    assert torch.allclose(feats[:, 0], vit.fc_norm(tokens[:, 1:].mean(1)), atol=1e-6)
    assert torch.equal(feats[:, 1:], tokens[:, 1:])


def test_token_axis_normalisation_is_the_default():
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    f = model.embedder.bottleneck_layer(model.backbone(x))
    tokens = model.embedder(model.backbone(x))
    # each channel divided by sqrt of its L2 norm across the 17 tokens, times sqrt(2)
    expected = f / (f.norm(dim=1, keepdim=True).clamp(min=1e-12).sqrt() * math.sqrt(2))
    assert torch.allclose(tokens, expected, atol=1e-6)
    model.embedder.embed_norm = "vector"
    vector = model.embedder(model.backbone(x))
    assert torch.allclose(vector, f / (f.norm(dim=-1, keepdim=True).clamp(min=1e-12).sqrt() * math.sqrt(2)),
                          atol=1e-6)
    assert torch.equal(model.embedder(model.backbone(x), norm_flag=False), f)


def test_classifier_weight_is_normalised_over_axis0_each_forward():
    model = _tiny().eval()
    model(torch.randn(1, 3, 32, 32))
    w = model.classifier.classifier_layer.weight
    assert torch.allclose(w.norm(dim=0), torch.ones(512), atol=1e-6)


def test_strict_load_under_either_alias():
    src, dst = _tiny(), _tiny()
    full = src.state_dict()
    assert torch.equal(full["embedder.bottleneck_layer_fc.weight"], full["embedder.bottleneck_layer.0.weight"])
    for drop in ("embedder.bottleneck_layer.0.", "embedder.bottleneck_layer_fc."):
        partial = {k: v for k, v in full.items() if not k.startswith(drop)}
        dst.load_state_dict(partial, strict=True)
        assert torch.equal(dst.embedder.bottleneck_layer_fc.weight, src.embedder.bottleneck_layer_fc.weight)
        assert dst.embedder.bottleneck_layer[0] is dst.embedder.bottleneck_layer_fc
    legacy = {k: v for k, v in full.items() if not k.startswith("embedder.bottleneck_layer.0.")}
    add_embedder_aliases(legacy, "embedder.")
    assert set(legacy) == set(full)


def test_unknown_norm_mode_is_an_error():
    with pytest.raises(ValueError, match="embed_norm"):
        _tiny(embed_norm="channels")


def test_adapter_fas_names_and_shapes_follow_spec_7_5(shared_dir):
    """No released adapter-FAS fixture exists: the ViT part must equal the DfD adapter fixture (with its 2-class
    head) under ``backbone.vit.``, plus the embedder on 2D features and the classifier."""
    ref = json.loads((shared_dir / "fixtures" / "reference_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        for size, width in (("small", 384), ("base", 768), ("large", 1024)):
            model = create_fas_model(f"vit_{size}_patch16_fs_adapter")
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            vit = {k[len("backbone.vit."):]: v for k, v in shapes.items() if k.startswith("backbone.vit.")}
            assert vit == ref[f"vit_{size}_patch16:fs_adapter"]
            assert {k: v for k, v in shapes.items() if not k.startswith("backbone.")} == {
                "embedder.bottleneck_layer_fc.weight": [512, 2 * width], "embedder.bottleneck_layer_fc.bias": [512],
                "embedder.bottleneck_layer.0.weight": [512, 2 * width], "embedder.bottleneck_layer.0.bias": [512],
                "classifier.classifier_layer.weight": [2, 512], "classifier.classifier_layer.bias": [2]}


def test_adapter_fas_forward_returns_logits_embedding_and_projected_features():
    model = create_fas_model("vit_small_patch16_fs_adapter", **TINY_VIT, adapter_reduction=4).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, emb, feats = model(x)
    assert logits.shape == (3, 2) and emb.shape == (3, 512) and feats.shape == (3, 12)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3))
    concat, _ = model.backbone.vit.forward_adapter(x)
    raw = torch.relu(model.embedder.bottleneck_layer_fc(concat))  # eval: dropout off
    # 2-D input: the norm is per vector (spec 7.5), f / (sqrt(||f||) * sqrt(2))
    assert torch.allclose(emb, raw / (raw.norm(dim=1, keepdim=True).sqrt() * math.sqrt(2)), atol=1e-6)
