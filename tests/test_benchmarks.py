"""The benchmark scripts run in their CPU smoke mode and print the JSON fields the issue asks for."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY_FSFM, TINY_VIT, faces_dir

TINY_PRETRAIN = json.dumps({k: v for k, v in TINY_FSFM.items() if k != "img_size"})
TINY_CLASSIFIER = json.dumps({k: v for k, v in TINY_VIT.items() if k != "img_size"})


def _json_lines(script: str, *argv: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_bench_datapath_smoke(tmp_path):
    (out,) = _json_lines("bench_datapath.py", "--num_images", "8", "--input_size", "32", "--patch_size", "8",
                         "--batch_size", "4", "--passes", "1", "--data_dir", str(tmp_path))
    pre = out["pretrain"]
    for side in ("ours", "baseline"):
        for key in ("samples_per_cpu_s", "samples_per_wall_s"):
            assert isinstance(pre[side][key], float) and pre[side][key] > 0, (side, key)
    assert pre["ratio_cpu"] == round(pre["ours"]["samples_per_cpu_s"] / pre["baseline"]["samples_per_cpu_s"], 3)
    assert pre["ratio_wall"] == round(pre["ours"]["samples_per_wall_s"] / pre["baseline"]["samples_per_wall_s"], 3)
    # both maskings give every sample round(0.75 * 16) = 12 masked patches of the 4x4 grid
    assert pre["masked_per_sample"] == {"ours": [12], "baseline": [12]}
    assert out["pretrain_samples_per_s_per_worker"] == pre["ours"]["samples_per_cpu_s"]
    assert out["finetune_samples_per_s_per_worker"] > 0 and len(out["load_average"]) == 3
    assert (out["num_images"], out["input_size"], out["batch_size"], out["torch_threads"]) == (8, 32, 4, 1)
    assert len(list((tmp_path / "pretrain" / "images").iterdir())) == 8
    assert len(list((tmp_path / "finetune" / "train" / "real_faces").iterdir())) == 4


@pytest.mark.slow
def test_device_pretrain_step_smoke_with_baseline():
    (out,) = _json_lines("device_pretrain_step.py", "--device", "cpu", "--batch_size", "2", "--steps", "1",
                         "--mask_sets", "1", "--input_size", "32", "--model_overrides", TINY_PRETRAIN, "--baseline")
    fast, base = out["fast"], out["baseline"]
    assert (fast["host_sync_per_step"], base["host_sync_per_step"]) == (False, True)
    assert (fast["fused_attention"], base["fused_attention"]) == (True, False)
    assert (fast["uint8_input"], base["uint8_input"]) == (True, False)
    assert fast["amp"] == base["amp"] == "none" and out["peak_mem_gib"] is None
    assert out["speedup_vs_baseline"] == round(fast["images_per_s"] / base["images_per_s"], 3)
    # same data, same fp32 arithmetic up to the attention kernel: the same loss
    assert abs(fast["last_loss"] - base["last_loss"]) < 1e-4


@pytest.mark.slow
def test_bench_eval_smoke_with_baseline():
    (out,) = _json_lines("bench_eval.py", "--device", "cpu", "--iters", "1", "--rounds", "2", "--warmup", "1",
                         "--batch_size", "2", "--input_size", "32", "--model_kwargs", TINY_CLASSIFIER, "--baseline",
                         "--opt_in", "bf16")
    ours, base, opt = out["ours"], out["baseline"], out["opt_in"]
    assert (ours["fused_attention"], base["fused_attention"]) == (True, False)
    assert (ours["inference_mode"], base["inference_mode"]) == (True, False)
    assert (ours["amp"], base["amp"], opt["amp"]) == ("none", "none", "bf16")
    assert not ours["compile"] and not base["compile"]  # compile is CUDA-only unless --compile on
    for side in (ours, base, opt):
        assert side["images_per_wall_s"] > 0 and side["images_per_cpu_s"] > 0 and side["first_batch_s"] >= 0
    assert out["ratio"] == {"wall": round(ours["images_per_wall_s"] / base["images_per_wall_s"], 3),
                            "cpu": round(ours["images_per_cpu_s"] / base["images_per_cpu_s"], 3)}
    assert opt["ratio_vs_baseline"]["cpu"] == round(opt["images_per_cpu_s"] / base["images_per_cpu_s"], 3)
    # fp32 by default: the same probabilities as the original's way; bf16 differs, but not by much
    assert out["ours_vs_baseline_max_prob_diff"] < 1e-5
    assert 0 < opt["max_prob_diff_vs_ours"] < 0.05 and 0 <= opt["argmax_agreement_vs_ours"] <= 1
    settings = out["settings"]
    assert (settings["batch_size"], settings["rounds"], settings["timed_batches_per_round"]) == (2, 2, 1)
    assert settings["threads"] == 1 and len(out["uptime"]["load_average_start"]) == 3


@pytest.mark.slow
def test_bench_predict_smoke_equal_scores():
    faces_dir()  # skips where ../shared/faces is absent
    (out,) = _json_lines("bench_predict.py", "--photos", "2", "--frames", "20", "--num_frames", "3", "--rounds", "1",
                         "--input_size", "32", "--batch_size", "4", "--model_kwargs", TINY_CLASSIFIER)
    # the two ways find the same faces (2 photos + 3 frames) and give them the same scores
    assert out["same_boxes"] is True and out["max_abs_score_diff"] <= 1e-6
    for group in ("photos", "video", "all"):
        assert out["ours"][group]["faces"] == out["baseline"][group]["faces"] > 0
        for key, ratio in (("faces_per_cpu_s", "cpu"), ("faces_per_wall_s", "wall")):
            expected = out["ours"][group][key] / out["baseline"][group][key]
            assert out["ratio"][group][ratio] == pytest.approx(expected, abs=2e-3)
    assert out["ours"]["all"]["faces"] == out["ours"]["photos"]["faces"] + out["ours"]["video"]["faces"]
    assert out["network_only_faces_per_cpu_s"] > 0
    settings = out["settings"]
    assert (settings["photos"], settings["num_frames"], settings["batch_size"], settings["rounds"]) == (2, 3, 4, 1)
    assert "load average" in out["uptime"]


@pytest.mark.slow
def test_bench_preprocess_smoke_both_ways():
    if not (REPO.parent / "shared" / "faces").is_dir():
        pytest.skip("needs ../shared/faces (the benchmark's real photos)")
    (out,) = _json_lines("bench_preprocess.py", "--frames", "24", "--num_frames", "3", "--repeats", "1",
                         "--size", "320x240", "--skip_fas")
    cases = {"video_face", "video_photos", "photos"}
    for clock in ("cpu", "wall"):
        assert set(out["ours"][clock]) == set(out["baseline"][clock]) == cases
        for c in cases:
            assert out["ratio"][clock][c] == round(out["ours"][clock][c] / out["baseline"][clock][c], 3)
    eq = out["equal_output"]
    # photos take the full search both ways: the same 68 faces of the 12 photos, the same 11 crops (dogs: none)
    assert (eq["photos"]["items"], eq["photos"]["faces_baseline"], eq["photos"]["faces_ours"]) == (12, 68, 68)
    assert eq["photos"]["min_crop_box_iou"] == 1.0 and eq["photos"]["crops_identical"] == 11
    # one face in each of the 3 sampled frames of the face video, found both ways
    assert (eq["video_face"]["items"], eq["video_face"]["faces_baseline"], eq["video_face"]["faces_ours"]) == (3, 3, 3)
    assert eq["video_face"]["crops_same_name"] == 3 and eq["video_face"]["min_crop_box_iou"] >= 0.95
    assert len(out["uptime_load"]["start"]) == 3 and out["settings"]["num_frames"] == 3
