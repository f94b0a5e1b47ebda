"""FAS network (spec 6.4): parameter names/shapes of the original, forward numerics, alias loading."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fsvfm.models_fas import add_embedder_aliases, create_fas_model
from fsvfm.registry import list_models, model_family
from tests.conftest import TINY_VIT


def _tiny(**kw):
    return create_fas_model("vit_small_patch16", **TINY_VIT, **kw)


def test_fixture_names_and_shapes_for_s_b_l(shared_dir):
    ref = json.loads((shared_dir / "fixtures" / "reference_fas_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        for name in ("vit_small_patch16", "vit_base_patch16", "vit_large_patch16"):
            shapes = {k: list(v.shape) for k, v in create_fas_model(name).state_dict().items()}
            assert shapes == ref[f"fas:{name}"]


def test_registry_family_and_huge_builds():
    assert list_models(family="fas") == ["fas_vit_base_patch16", "fas_vit_huge_patch14", "fas_vit_large_patch16",
                                         "fas_vit_small_patch16"]
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
