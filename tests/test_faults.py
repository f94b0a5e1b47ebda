"""Faults outside the program end in one line: a full disk or a read-only output folder (exit 2, older files
intact, no temporary files), SIGTERM (exit 143), an unusable --device / --amp / --dist_timeout, adapter flags,
a busy --port. Full disks are a real small tmpfs where the test may mount one (a user namespace) and a stand-in
that raises the kernel's error from ``open``/``write`` otherwise (in-process drills of the real programs)."""
from __future__ import annotations

import builtins
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fsvfm import app, main_finetune_DfD, main_finetune_FAS, main_pretrain, predict, visualize
from fsvfm.evaluation import main_for
from fsvfm.preprocess.cli import main_face_parse, main_fas_preprocess
from fsvfm.tasks import DFD_TASK
from fsvfm.tasks.classifier import check_resume_flags
from fsvfm.util.checkpoint import load_checkpoint, save_checkpoint
from fsvfm.util.cli import run_cli
from fsvfm.util.errors import OutputError
from fsvfm.util.log import TolerantFileHandler, setup_logging
from tests.helpers import (
    MODEL_KWARGS,
    PRETRAIN_DEFAULT,
    REPO,
    detector_checkpoint,
    finetune_argv,
    pretrain_argv,
    write_face_image,
)


def dfd(argv):
    """``python fsvfm/main_finetune_DfD.py ARGV`` (its ``cli`` is the library entry, without the boundary)."""
    return run_cli(main_finetune_DfD.main, main_finetune_DfD.get_args_parser(), argv)


MCIO_DEFAULT = REPO / "datasets/finetune/preprocess_FAS/config/default.py"
_open, _os_open = builtins.open, os.open


@pytest.fixture(autouse=True)
def _no_stale_console_handler():
    """The programs' console handler holds the stderr of the test that installed it (capsys's, closed later)."""
    import logging
    yield
    for handler in [h for h in logging.getLogger().handlers if getattr(h, "_fsvfm", False)]:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _exit_line(capsys, run, code: int = 2) -> str:
    """Run ``run()``: exit ``code`` (raised or returned), exactly one ``error:`` line, the last on stderr."""
    try:
        result = run()
    except SystemExit as e:
        result = e.code
    assert result == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if ": error: " in line]) == 1 and ": error: " in err[-1], err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def _stand_in(monkeypatch, folder: Path, number: int, match: str = "") -> None:
    """Writes to files under ``folder`` whose name contains ``match`` fail as the kernel fails them: ENOSPC on
    the first ``write`` (a full disk), EROFS on ``open`` (a read-only mount)."""
    folder = str(folder)

    def hit(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and str(path).startswith(folder) and match in Path(path).name

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(number, os.strerror(number))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        if hit(file) and any(c in mode for c in "wax+"):
            if number == errno.EROFS:
                raise OSError(number, os.strerror(number), str(file))
            return Full(_open(file, mode, *args, **kwargs))
        return _open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if number == errno.EROFS and hit(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(number, os.strerror(number), str(path))
        return _os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# ------------------------------------------------------------------------------- full / read-only disks
def test_full_disk_at_a_checkpoint_save_keeps_the_older_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "checkpoint-0.pth", {"w": torch.ones(3)}, epoch=0)
    _stand_in(monkeypatch, tmp_path, errno.ENOSPC, match="checkpoint-1")
    with pytest.raises(OutputError, match=rf"^no space left on device while writing {tmp_path}/checkpoint-1\.pth "
                                          r"\([0-9.]+ [KMGT]?B free\); free some space"):
        save_checkpoint(tmp_path / "checkpoint-1.pth", {"w": torch.zeros(3)}, epoch=1)
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint-0.pth")["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0.pth"]


@pytest.mark.slow
def test_pretraining_on_a_full_disk_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from tools.synthetic_data import make_synthetic_pretrain_dataset
    data = make_synthetic_pretrain_dataset(tmp_path / "faces", 8, size=32, seed=0)
    out = tmp_path / "out"
    _stand_in(monkeypatch, out, errno.ENOSPC, match="checkpoint-1")
    line = _exit_line(capsys, lambda: main_pretrain.cli(pretrain_argv(data, out)))
    assert line.startswith(f"python -m fsvfm.main_pretrain: error: no space left on device while writing {out}/"
                           "checkpoint-1.pth (") or "no space left on device while writing" in line, line
    assert f"{out}/checkpoint-" in line and "free)" in line
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint-0.pth")["epoch"] == 0       # the older set is intact
    assert load_checkpoint(out / "checkpoint-te-0.pth")["epoch"] == 0
    assert not list(out.glob("checkpoint-1*")) and _temp_files(out) == []


@pytest.mark.slow
def test_finetuning_into_a_read_only_folder_one_line_exit_2(workspace, tmp_path, monkeypatch, capsys):
    _, pretrained, data = workspace
    out = tmp_path / "ft"
    _stand_in(monkeypatch, out, errno.EROFS, match="checkpoint")
    line = _exit_line(capsys, lambda: dfd(finetune_argv(pretrained, data, out, "--epochs", "1")))
    assert line.endswith(f"error: {out} is read-only (writing checkpoint-min_val_loss.pth); choose a writable output "
                         "folder or remount it read-write"), line
    assert _temp_files(out) == []


def test_predict_output_on_a_full_disk_one_line_exit_2(tmp_path, monkeypatch, capsys):
    ckpt = detector_checkpoint(tmp_path / "ckpt")
    image = write_face_image(tmp_path / "in" / "photo.jpg")
    out = tmp_path / "results"
    out.mkdir()
    _stand_in(monkeypatch, out, errno.ENOSPC)
    line = _exit_line(capsys, lambda: predict.main(["--checkpoint", str(ckpt), str(image), "--device", "cpu",
                                                    "--output", str(out / "r.json")]))
    assert f"error: no space left on device while writing {out}/r.json (" in line
    assert list(out.iterdir()) == []


def test_preprocessing_into_a_full_disk_stops_with_one_line(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("a", "b", "c"):
        write_face_image(src / f"{name}.png")
    _stand_in(monkeypatch, dst, errno.ENOSPC)
    argv = ["--dataset", "custom", "--src", str(src), "--dst", str(dst), "--workers", "1", "--backend", "landmarks"]
    line = _exit_line(capsys, lambda: main_face_parse(PRETRAIN_DEFAULT, argv))
    assert "error: no space left on device while writing " in line and str(dst) in line   # not "error 3" counted
    assert _temp_files(dst) == []


def test_log_file_that_cannot_be_written_warns_once_and_logging_goes_on(tmp_path, monkeypatch, capsys):
    import logging
    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    root = setup_logging(tmp_path)
    handler = next(h for h in root.handlers if isinstance(h, TolerantFileHandler))
    handler.setStream(FullDisk())  # logging opens its files with its own reference to open()
    for i in range(3):
        logging.getLogger("drill").info("record %d", i)
    err = capsys.readouterr().err
    assert err.count("warning: cannot write the log file") == 1 and "record 2" in err and "Traceback" not in err
    monkeypatch.undo()
    (tmp_path / "ro").mkdir()
    _stand_in(monkeypatch, tmp_path / "ro", errno.EROFS)
    setup_logging(tmp_path / "ro")
    assert capsys.readouterr().err.startswith(f"warning: cannot write the log file {tmp_path}/ro/log_detail.txt "
                                              "(Read-only file system); logging to the console only")
    setup_logging()


_DRILL = textwrap.dedent("""
    import argparse, sys, torch
    from fsvfm.util.checkpoint import save_checkpoint
    from fsvfm.util.cli import run_cli
    def main(args):
        save_checkpoint(args.out + "/checkpoint-%d.pth" % args.epoch, {"w": torch.zeros(args.numel)}, epoch=args.epoch)
    p = argparse.ArgumentParser("drill")
    p.add_argument("out"); p.add_argument("epoch", type=int); p.add_argument("numel", type=int)
    run_cli(main, p)
""")


def _namespace_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt || mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _namespace_ok(), reason="needs `unshare --user --mount` (util-linux) with unprivileged user namespaces "
                    "allowed (sysctl kernel.unprivileged_userns_clone=1) to mount a small tmpfs")
def test_real_small_tmpfs_full_and_read_only(tmp_path):
    """The kernel's own ENOSPC and EROFS: a 256 KiB tmpfs in a user namespace; epoch 0 fits, epoch 1 does not."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "drill.py").write_text(_DRILL)
    py = f"{sys.executable} {tmp_path / 'drill.py'} {mnt}"
    script = (f"mount -t tmpfs -o size=256k tmpfs {mnt} && {py} 0 1000 && {py} 1 200000; echo rc=$?; "
              f"ls {mnt}; mount -o remount,ro {mnt} && {py} 2 10; echo rc=$?")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                         capture_output=True, text=True, env=env, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith(f"drill: error: no space left on device while writing {mnt}/checkpoint-1.pth (")
    assert lines[1] == (f"drill: error: {mnt} is read-only (writing checkpoint-2.pth); choose a writable output "
                        "folder or remount it read-write")
    assert len(lines) == 2 and res.stdout.split() == ["rc=2", "checkpoint-0.pth", "rc=2"], (res.stdout, res.stderr)


@pytest.mark.slow
def test_sigterm_removes_temp_files_one_line_exit_143(tmp_path):
    code = textwrap.dedent(f"""
        import argparse, time
        from fsvfm.util.cli import run_cli
        from fsvfm.util.fileio import atomic_path
        def main(args):
            with atomic_path({str(tmp_path / 'out.bin')!r}) as tmp:
                open(tmp, "wb").write(b"half")
                print("writing", flush=True)
                time.sleep(60)
        run_cli(main, argparse.ArgumentParser("drill"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "writing"
    assert len(_temp_files(tmp_path)) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip() == "drill: stopped by SIGTERM; temporary files were removed, finished outputs are kept"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- start-up flag checks
def _entry_points(tmp_path: Path) -> dict:
    img = str(tmp_path / "x.png")
    custom = ["--dataset", "custom", "--src", str(tmp_path), "--dst", str(tmp_path / "o")]
    return {
        "predict": lambda a: predict.main(["--checkpoint", "x.pth", img, *a]),
        "app": lambda a: app.main(["--port", "0", *a]),
        "visualize": lambda a: visualize.main(["masking", "--image", img, "--out", str(tmp_path / "o.png"), *a]),
        "main_pretrain": lambda a: main_pretrain.cli(a),
        "main_finetune_DfD": dfd,
        "main_finetune_FAS": lambda a: main_finetune_FAS.cli(["--config", "C", *a]),
        "main_test_DfD": lambda a: main_for(DFD_TASK, a),
        "face_parse": lambda a: main_face_parse(PRETRAIN_DEFAULT, [*custom, *a]),
        "preprocess_MCIO": lambda a: main_fas_preprocess(MCIO_DEFAULT, "MCIO", [*custom, *a]),
    }


@pytest.mark.parametrize("program", list(_entry_points(Path("."))))
def test_device_cuda_without_a_gpu_is_one_line_in_every_program(program, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = _entry_points(tmp_path)[program]
    line = _exit_line(capsys, lambda: run(["--device", "cuda"]))
    assert line.endswith("error: --device cuda: no CUDA GPU is usable here (torch.cuda.is_available() is False); "
                         "use --device cpu"), line


@pytest.mark.parametrize("flags,message", [
    (["--amp", "fp16", "--device", "cpu"], "error: --amp fp16 needs a CUDA device (here: cpu); use --amp bf16 or "
                                           "--amp none on CPU"),
    (["--device", "gpu"], "error: --device gpu: not a device name; use cpu, cuda or cuda:N"),
    (["--dist_timeout", "-1", "--device", "cpu"], "error: --dist_timeout=-1.0: the collective timeout must be a "
                                                  "positive number of minutes"),
])
def test_amp_device_and_timeout_flags_are_one_line(flags, message, capsys):
    assert _exit_line(capsys, lambda: dfd(flags)).endswith(message)


def test_fs_adapter_flag_with_a_plain_model_is_one_line_before_the_log(capsys):
    line = _exit_line(capsys, lambda: dfd(["--model", "vit_small_patch16", "--device", "cpu",
                                                             "--trainable_modules", "fs-adapter"]))
    assert line.endswith("error: --trainable_modules fs-adapter trains the FS-Adapter, but --model vit_small_patch16 "
                         "has none: use --model vit_small_patch16_fs_adapter (or --trainable_modules all)")


@pytest.mark.slow
def test_resuming_an_adapter_run_without_its_flag_names_the_flag(workspace, tmp_path, capsys):
    """An interrupted adapter run's checkpoint (args pickled as a Namespace, as the original writes) resumed
    with the default --trainable_modules all."""
    import argparse

    _, pretrained, data = workspace
    out = tmp_path / "ft"
    argv = finetune_argv(pretrained, data, out, "--epochs", "1")
    argv[argv.index("vit_small_patch16")] = "vit_small_patch16_fs_adapter"
    assert main_finetune_DfD.cli([*argv, "--trainable_modules", "fs-adapter"])["output_dir"] == str(out)
    argv[argv.index("--epochs") + 1] = "2"
    argv.append("--auto_resume")
    line = _exit_line(capsys, lambda: dfd(argv))
    assert line.endswith(f"error: {out}/checkpoint-0.pth was trained with --trainable_modules fs-adapter but this "
                         "run has --trainable_modules all: rerun with --trainable_modules fs-adapter to resume it, or "
                         "give another --output_dir to start afresh"), line
    released = {"args": argparse.Namespace(trainable_modules="fs-adapter", model_kwargs=MODEL_KWARGS)}
    with pytest.raises(ValueError, match="--trainable_modules fs-adapter to resume it"):
        check_resume_flags(argparse.Namespace(trainable_modules="all"), released, "x.pth")
    check_resume_flags(argparse.Namespace(trainable_modules="fs-adapter"), released, "x.pth")


def test_app_on_a_busy_port_is_one_line_before_loading_models(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        line = _exit_line(capsys, lambda: app.main(["--port", str(port), "--detector", str(tmp_path / "none.pth")]))
    assert line == (f"python -m fsvfm.app: error: --port {port}: 127.0.0.1:{port} is already in use (another app or "
                    f"server?); choose another --port, e.g. --port {port + 1}")
    assert time.monotonic() - start < 5
