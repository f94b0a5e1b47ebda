"""Speed switches: precision default, fused AdamW, torch.compile fallback, fused attention."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from fsvfm.data.device import DeviceNormalize, loader_kwargs, to_device
from fsvfm.engine_pretrain import EMATarget, pretrain_loss, train_step
from fsvfm.losses import build_cl_loss
from fsvfm.masking import crfrp_masks
from fsvfm.models_fsfm import vit_target_network
from fsvfm.registry import create_model
from fsvfm.util import accel
from fsvfm.util.accel import (
    build_adamw,
    default_amp,
    fused_attention_blocks,
    inference_context,
    maybe_compile,
    prepare_inference,
    set_fused_attention,
    supports_device_skip,
)
from fsvfm.util.amp import NativeScalerWithGradNormCount
from fsvfm.util.train_step import StepConfig
from tests.helpers import TINY_FSFM, TINY_VIT
from tools.synthetic_data import synthetic_parsing_maps


def _networks():
    torch.manual_seed(0)
    model = create_model("fsfm_vit_base_patch16", norm_pix_loss=True, **TINY_FSFM)
    target = vit_target_network("fsfm_vit_base_patch16", **TINY_FSFM)
    target.load_state_dict(model.state_dict(), strict=False)
    target.requires_grad_(False)
    return model, target


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    maps = torch.from_numpy(synthetic_parsing_maps(n, 32, seed=0))
    img_mask, sfr_mask, _ = crfrp_masks(maps, 8, 0.75, generator=torch.Generator().manual_seed(0))
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return {"image": images, "img_mask": img_mask, "specific_facial_region_mask": sfr_mask}


def _steps(model, target, step_model, step_target, n_steps: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    step = StepConfig("none", 1, 1.0)
    opt = build_adamw(model.parameters(), 1e-3, "cpu")
    ema, loss_fn = EMATarget(model, target), pretrain_loss(build_cl_loss("SimSiam"), 0.007, 0.1)
    normalize = DeviceNormalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3], "cpu")
    rows = []
    for _ in range(n_steps):
        row, _ = train_step(step_model, step_target, ema, _batch(), opt, NativeScalerWithGradNormCount("cpu", False),
                            loss_fn, step, torch.device("cpu"), 0.99, normalize=normalize)
        opt.zero_grad(set_to_none=True)
        rows.append(row)
    return torch.stack(rows), [p.detach().clone() for p in (*model.parameters(), *target.parameters())]


def test_default_amp_is_bf16_only_on_cuda_cards_that_support_it(monkeypatch):
    assert default_amp(None, "cpu") == "none"
    assert default_amp("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert default_amp(None, "cuda") == "bf16" and default_amp("fp16", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert default_amp(None, "cuda") == "fp16"


def test_fused_adamw_only_on_cuda_by_default():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert not supports_device_skip(build_adamw(p, 1e-3, "cpu"))
    assert supports_device_skip(build_adamw(p, 1e-3, "cpu", fused=True))
    assert build_adamw(p, 1e-3, "cpu").defaults["betas"] == (0.9, 0.95)


def test_loader_kwargs_pin_only_on_cuda_and_prefetch_only_with_workers():
    assert loader_kwargs(0, "cpu", True, 4) == {"num_workers": 0, "pin_memory": False}
    assert loader_kwargs(3, "cuda", True, 4) == {"num_workers": 3, "pin_memory": True, "persistent_workers": True,
                                                 "prefetch_factor": 4}


def test_attention_uses_fused_sdpa_and_the_eager_path_agrees():
    model, _ = _networks()
    assert fused_attention_blocks(model) == (4, 4)  # 2 encoder + 1 rep-decoder + 1 pixel-decoder blocks
    x = torch.randn(2, 17, 48)
    block = model.blocks[0]
    fused = block(x)
    assert set_fused_attention(model, False) == 4 and fused_attention_blocks(model) == (0, 4)
    torch.testing.assert_close(block(x), fused, rtol=1e-5, atol=1e-6)


def test_compiled_step_equals_eager_step():
    """torch.compile's graph capture of the online and target networks changes no number
    (the 'eager' backend runs the captured graphs; inductor is the default on a real run)."""
    model, target = _networks()
    eager_rows, eager_params = _steps(model, target, model, target)
    model, target = _networks()
    rows, params = _steps(model, target, maybe_compile(model, True, "cpu", backend="eager"),
                          maybe_compile(target, True, "cpu", backend="eager"))
    assert torch.equal(rows, eager_rows)
    assert all(torch.equal(a, b) for a, b in zip(params, eager_params))


def test_compile_falls_back_to_eager_when_unavailable(monkeypatch, caplog):
    model, _ = _networks()
    assert maybe_compile(model, False, "cpu") is model
    monkeypatch.setattr(accel, "compile_unavailable_reason", lambda device: "no C++ compiler for inductor")
    with caplog.at_level(logging.WARNING):
        assert maybe_compile(model, True, "cpu") is model
    assert "--compile: no C++ compiler for inductor; running eagerly" in caplog.text


@pytest.mark.parametrize("dtype", [torch.int16, torch.float64])
def test_device_normalize_dtypes(dtype):
    norm = DeviceNormalize([0.5] * 3, [0.5] * 3, "cpu")
    images = torch.zeros(1, 3, 2, 2, dtype=dtype)
    if dtype.is_floating_point:
        assert norm(images) is images
    else:
        with pytest.raises(TypeError, match="uint8"):
            norm(images)
    assert torch.equal(norm(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)), torch.ones(1, 3, 1, 1))


def test_uint8_images_without_statistics_are_refused():
    with pytest.raises(ValueError, match="DeviceNormalize"):
        to_device(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), "cpu")
    floats = torch.zeros(1, 3, 2, 2)
    assert to_device(floats, "cpu") is floats


def _tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_base_patch16", num_classes=2, **TINY_VIT).eval()


def test_inference_path_gives_the_original_ways_logits_in_fp32():
    """prepare_inference + inference_context (fused SDPA, inference mode, frozen weights) against the
    original's eager attention under no_grad, same weights and images."""
    baseline = _tiny_classifier()
    set_fused_attention(baseline, False)
    fast = prepare_inference(copy.deepcopy(baseline), "cpu")
    assert fused_attention_blocks(fast) == (2, 2) and fused_attention_blocks(baseline) == (0, 2)
    assert not any(p.requires_grad for p in fast.parameters()) and not fast.training
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = baseline(images)
    with inference_context("cpu", "none"):
        logits = fast(images)
    assert logits.dtype == torch.float32 and logits.is_inference() and logits.shape == (3, 2)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert not torch.equal(expected[0], expected[1])  # distinct images give distinct logits


def test_bf16_opt_in_on_cpu_stores_bf16_weights_and_stays_close():
    fp32 = prepare_inference(_tiny_classifier(), "cpu")
    bf16 = prepare_inference(_tiny_classifier(), "cpu", amp="bf16")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with inference_context("cpu", "none"):
        expected = fp32(images).softmax(-1)
    with inference_context("cpu", "bf16"):
        probs = bf16(images)  # fp32 images in, autocast converts them
        assert probs.dtype == torch.bfloat16
        probs = probs.float().softmax(-1)
    assert not torch.is_inference_mode_enabled()
    gap = (probs - expected).abs().max().item()
    assert 0 < gap < 0.02  # bf16 keeps 8 bits of mantissa: different, but close


def test_prepare_inference_compile_falls_back_when_unavailable(monkeypatch):
    model = _tiny_classifier()
    monkeypatch.setattr(accel, "compile_unavailable_reason", lambda device: "no C++ compiler for inductor")
    assert prepare_inference(model, "cpu", compile=True) is model
