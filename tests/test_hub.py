"""Released weights through the real huggingface_hub code path, offline: each test builds a hub cache in
the hub's own on-disk layout (blobs, snapshot symlinks, refs/main) and sets HF_HUB_OFFLINE / HF_HUB_CACHE."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsvfm import hub, pretrain_runner
from fsvfm.util.checkpoint import (
    CheckpointError,
    beside,
    load_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)
from fsvfm.util.norm_stats import STATS_FILENAME, read_mean_std, write_mean_std
from tests.helpers import (
    COMMIT,
    FT,
    MODEL_KWARGS,
    PRE,
    PRETRAIN_STATS,
    REPO,
    add_to_cache,
    finetune_argv,
    make_split_tree,
    tiny_classifier,
)


def test_release_table_matches_spec_10():
    names = [r.name for r in hub.RELEASES if not r.folder]
    assert names == ["VF2_ViT-B", "FS-VFM_ViT-S_VF2_600e", "FS-VFM_ViT-B_VF2_600e", "FS-VFM_ViT-L_VF2_600e"]
    b = hub.find_release("FS-VFM_ViT-B_VF2_600e")
    assert b.paths(target=True) == ("pretrained_models/FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth",
                                    "pretrained_models/FS-VFM_ViT-B_VF2_600e/pretrain_ds_mean_std.txt",
                                    "pretrained_models/FS-VFM_ViT-B_VF2_600e/checkpoint-te-600.pth")
    assert hub.find_release("VF2_ViT-B").files[0] == "pretrained_models/VF2_ViT-B/checkpoint-400.pth"
    assert hub.find_release("DiFF_ViT-L").folder == ("finetuned_models/FS-VFM_extensions/cross_dataset_DFD_and_DiFF/"
                                                     "ViT-L_VF2_600e/FT_on_FF++_DF_c23_32frames")
    assert hub.find_release("FSFM_DiFF_ViT-B").folder == "finetuned_models/FF++_DF_c23_32frames/correct_version"
    assert len({r.name for r in hub.RELEASES}) == len(hub.RELEASES) == 4 + 4 * 3 + 4 + 1
    unified = hub.find_release("Unified-detector_ViT-B")
    assert unified.folder == "finetuned_models/Unified-detector/v1_Fine-tuned_on_4_classes"
    assert unified.description.endswith("Real & Bonafide, Deepfake, Diffusion & AIGC, Spoofing & Presentation attacks")


@pytest.mark.parametrize("uri,expected", [
    ("hf://Wolowolo/fsfm-3c/pretrained_models/VF2_ViT-B/checkpoint-400.pth",
     ("Wolowolo/fsfm-3c", "pretrained_models/VF2_ViT-B/checkpoint-400.pth")),
    ("hf://a/b/c", ("a/b", "c"))])
def test_parse_hub_uri(uri, expected):
    assert hub.parse_hub_uri(uri) == expected


@pytest.mark.parametrize("uri", ["hf://Wolowolo/fsfm-3c", "hf://Wolowolo//x.pth", "/local/x.pth"])
def test_parse_hub_uri_rejects(uri):
    with pytest.raises(hub.HubError, match="hf://Wolowolo/fsfm-3c/<path"):
        hub.parse_hub_uri(uri)


def test_download_places_files_in_the_script_layout(cache, released, tmp_path):
    dest = tmp_path / "checkpoint"
    paths = hub.download("FS-VFM_ViT-S_VF2_600e", dest_dir=dest)
    assert paths == [dest / PRE / "checkpoint-599.pth", dest / PRE / STATS_FILENAME]
    assert [p.read_bytes() for p in paths] == [released[f"{PRE}/checkpoint-599.pth"], released[f"{PRE}/{STATS_FILENAME}"]]
    assert not (dest / PRE / "checkpoint-te-599.pth").exists()
    inode = paths[0].stat().st_ino
    with_target = hub.download("FS-VFM_ViT-S_VF2_600e", target=True, dest_dir=dest)
    assert with_target[2].read_bytes() == released[f"{PRE}/checkpoint-te-599.pth"]
    assert with_target[0].stat().st_ino == inode  # an identical file already there is kept
    blob = Path(os.path.realpath(cache / "models--Wolowolo--fsfm-3c/snapshots" / COMMIT / PRE / "checkpoint-599.pth"))
    assert inode == blob.stat().st_ino  # hard link into the hub cache (same file system here)


def test_download_folder_and_repository_path(cache, released, tmp_path):
    paths = hub.download("DfD_ViT-S", dest_dir=tmp_path)
    assert paths == [tmp_path / FT / "experiments_test/test_results.txt", tmp_path / FT / "log_detail.txt"]
    assert paths[1].read_bytes() == b"fine-tuning log\n"
    assert hub.download(f"{PRE}/{STATS_FILENAME}", dest_dir=tmp_path / "x") == [tmp_path / "x" / PRE / STATS_FILENAME]


def test_missing_files_name_repository_and_path(cache, tmp_path):
    dest = tmp_path / "checkpoint"
    with pytest.raises(hub.HubError, match=r"'pretrained_models/nope\.pth' of the Hugging Face repository "
                                           r"Wolowolo/fsfm-3c is not in the hub cache .* HF_HUB_OFFLINE is set"):
        hub.hub_file("pretrained_models/nope.pth")
    with pytest.raises(hub.HubError, match="FS-VFM_ViT-B_VF2_600e/checkpoint-600.pth"):
        hub.download("FS-VFM_ViT-B_VF2_600e", dest_dir=dest)
    with pytest.raises(hub.HubError, match="unknown release 'ViT-X'"):
        hub.download("ViT-X", dest_dir=dest)
    with pytest.raises(CheckpointError, match="'pretrained_models/none/checkpoint-1.pth' of the Hugging Face "
                                              "repository Wolowolo/fsfm-3c"):
        load_checkpoint("hf://Wolowolo/fsfm-3c/pretrained_models/none/checkpoint-1.pth")
    assert not dest.exists()


def test_hf_uri_loads_and_brings_its_statistics(cache, released):
    uri = f"hf://Wolowolo/fsfm-3c/{PRE}/checkpoint-599.pth"
    local = resolve_checkpoint_path(uri)
    assert local == cache / "models--Wolowolo--fsfm-3c/snapshots" / COMMIT / PRE / "checkpoint-599.pth"
    assert read_mean_std(local.parent / STATS_FILENAME) == PRETRAIN_STATS
    ckpt = load_checkpoint(uri)
    assert torch.equal(ckpt["model"]["pos_embed"], load_checkpoint(local)["model"]["pos_embed"])
    assert resolve_checkpoint_path("relative/x.pth") == Path("relative/x.pth")
    assert beside(uri, "checkpoint-te-599.pth") == f"hf://Wolowolo/fsfm-3c/{PRE}/checkpoint-te-599.pth"


def test_pretraining_resume_from_hf_finds_the_target(cache):
    args = argparse.Namespace(resume=f"hf://Wolowolo/fsfm-3c/{PRE}/checkpoint-599.pth", auto_resume=False,
                              resume_target_network=None, output_dir="")
    found = pretrain_runner.find_resume_set(args)
    online, target = found.paths["online"], found.paths["target"]
    assert (online.name, target.name) == ("checkpoint-599.pth", "checkpoint-te-599.pth")
    assert target.parent == online.parent


def test_finetune_from_hf_uses_the_release_statistics(cache, tmp_path):
    from fsvfm import main_finetune_DfD
    data = make_split_tree(tmp_path / "data", "train", videos=2, frames=2)
    make_split_tree(data, "val", videos=1, frames=2)
    write_mean_std(tmp_path / "decoy" / STATS_FILENAME, [0.1] * 3, [0.9] * 3)
    out = tmp_path / "ft"
    main_finetune_DfD.cli(finetune_argv(f"hf://Wolowolo/fsfm-3c/{PRE}/checkpoint-599.pth", data, out, "--epochs", "1"))
    assert load_checkpoint(out / "checkpoint-0.pth")["norm_stats"] == {"mean": PRETRAIN_STATS[0], "std": PRETRAIN_STATS[1]}


@pytest.mark.slow
def test_cli_offline_with_environment(cache, tmp_path):
    """``python -m fsvfm.hub`` in a fresh process, configured only by HF_HUB_OFFLINE / HF_HUB_CACHE."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "fsvfm.hub", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    res = cli("download", "FS-VFM_ViT-S_VF2_600e", "--target")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [f"checkpoint/{PRE}/checkpoint-599.pth", f"checkpoint/{PRE}/{STATS_FILENAME}",
                                  f"checkpoint/{PRE}/checkpoint-te-599.pth"]
    assert (tmp_path / "checkpoint" / PRE / "checkpoint-599.pth").is_file()
    res = cli("list")
    assert res.returncode == 0
    lines = {}
    for line in res.stdout.splitlines()[1:]:
        words = line.split()
        at = next(i for i, w in enumerate(words) if w.startswith(("pretrained_models/", "finetuned_models/")))
        lines[words[at]] = words[at + 1:]
    assert len(lines) == 4 * 3 + 17 and lines[f"{FT}/"] == ["-"]
    size = (tmp_path / "checkpoint" / PRE / STATS_FILENAME).stat().st_size
    assert lines[f"{PRE}/{STATS_FILENAME}"] == [str(size), "B"]
    assert lines["pretrained_models/VF2_ViT-B/checkpoint-400.pth"] == ["-"]
    res = cli("download", "FS-VFM_ViT-L_VF2_600e")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "'pretrained_models/FS-VFM_ViT-L_VF2_600e/checkpoint-599.pth' of the Hugging Face repository " \
           "Wolowolo/fsfm-3c" in res.stderr


@pytest.mark.parametrize("size,text", [(None, "-"), (512, "512 B"), (1536, "1.5 KB"), (3 * 2**30, "3.0 GB")])
def test_human_sizes(size, text):
    assert hub._human(size) == text


def test_predict_from_hf_checkpoint(cache, tmp_path):
    """predict's --checkpoint takes hf:// too (the same resolution as every other program)."""
    from fsvfm.predict import Detector
    src = tmp_path / "ft.pth"
    save_checkpoint(src, tiny_classifier().state_dict(), args={"model": "vit_small_patch16", "input_size": 32,
                                                               "model_kwargs": MODEL_KWARGS},
                    norm_stats={"mean": [0.5] * 3, "std": [0.25] * 3})
    add_to_cache(cache, f"{FT}/checkpoint-min_val_loss.pth", src.read_bytes())
    det = Detector.from_checkpoint(f"hf://Wolowolo/fsfm-3c/{FT}/checkpoint-min_val_loss.pth", device="cpu", detect=False)
    assert det.info["norm_stats"]["mean"] == [0.5] * 3 and det.info["input_size"] == 32
    record = det.predict(torch.zeros(40, 30, 3, dtype=torch.uint8).numpy())
    assert record["faces"][0]["box"] == [0, 0, 30, 40] and record["error"] is None


@pytest.mark.parametrize("path,release,root", [
    ("/d/checkpoint/finetuned_models/FS-VFM_extensions/cross_domain_FAS/ViT-B_VF2_600e/MCIO_protocol/x.pth.tar",
     "FAS_ViT-B", "/d/checkpoint"),
    ("/d/finetuned_models/FS-VFM_extensions/finetune_fs-adapter/cross_domain_FAS/ViT-L_VF2_600e/MCIO_protocol/a/x.tar",
     "FS-Adapter_FAS_ViT-L", "/d"),
    ("/d/finetuned_models/MCIO_protocol/x.pth.tar", "FSFM_FAS_ViT-B", "/d"),
    ("hf://Wolowolo/fsfm-3c/finetuned_models/Unified-detector/v1_Fine-tuned_on_4_classes/c.pth", "Unified-detector_ViT-B", ""),
    ("/d/mine/x.pth.tar", None, None),
    ("hf://other/repo/finetuned_models/MCIO_protocol/x.pth.tar", None, None)])
def test_finetuned_release_of_a_path(path, release, root):
    found = hub.finetuned_release_of(path)
    assert (found[0].name, found[1]) == (release, root) if release else found is None


def test_pretrained_release_of_each_finetuned_folder():
    pre = {r.name: r.pretrained for r in hub.RELEASES if r.folder}
    assert pre["FAS_ViT-S"] == pre["DfD_ViT-S"] == "FS-VFM_ViT-S_VF2_600e"
    assert pre["FS-Adapter_FAS_ViT-L"] == "FS-VFM_ViT-L_VF2_600e"
    assert pre["FSFM_FAS_ViT-B"] == pre["Unified-detector_ViT-B"] == "VF2_ViT-B"
    assert pre["FS-Adapter_DfD_DiFF"] is None  # one folder for all sizes: no single pre-trained release


def test_pretrained_statistics_are_fetched_only_for_files_from_the_hub(cache, tmp_path, monkeypatch):
    """A local copy looks in its download folder, checkpoint/ and the hub cache; only an hf:// path or a file of
    the hub cache (what predict passes on for hf://) fetches."""
    monkeypatch.chdir(tmp_path)
    fetched = []
    monkeypatch.setattr(hub, "hub_file", lambda rel, *a, **k: fetched.append(rel) or tmp_path / "fetched.txt")
    fas = "finetuned_models/FS-VFM_extensions/cross_domain_FAS/ViT-S_VF2_600e/MCIO_protocol/c.pth.tar"
    snapshot = cache / "models--Wolowolo--fsfm-3c/snapshots" / COMMIT
    release, places = hub.pretrained_stats_candidates(tmp_path / "dl" / fas)
    assert release.name == "FS-VFM_ViT-S_VF2_600e" and fetched == []
    assert places == [tmp_path / "dl" / PRE / STATS_FILENAME, Path("checkpoint") / PRE / STATS_FILENAME,
                      snapshot / PRE / STATS_FILENAME]
    _, places = hub.pretrained_stats_candidates(f"hf://Wolowolo/fsfm-3c/{fas}")  # cached: no request
    assert fetched == [] and places[-1] == snapshot / PRE / STATS_FILENAME
    (snapshot / PRE / STATS_FILENAME).unlink()  # not in the cache: an hf:// checkpoint's statistics are fetched
    _, places = hub.pretrained_stats_candidates(f"hf://Wolowolo/fsfm-3c/{fas}")
    assert fetched == [f"{PRE}/{STATS_FILENAME}"] and places[-1] == tmp_path / "fetched.txt"
    _, places = hub.pretrained_stats_candidates(snapshot / fas)
    assert len(fetched) == 2 and places == [snapshot / PRE / STATS_FILENAME, Path("checkpoint") / PRE / STATS_FILENAME,
                                            tmp_path / "fetched.txt"]
    assert hub.pretrained_stats_candidates(tmp_path / "dl" / fas, fetch=True)[1][-1] == tmp_path / "fetched.txt"
    assert hub.pretrained_stats_candidates(tmp_path / "mine.pth.tar", fetch=True) == (None, []) and len(fetched) == 3
