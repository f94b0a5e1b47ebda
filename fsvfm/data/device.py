"""Getting batches onto the device cheaply: uint8 images from the workers, normalised on the device.

DataLoader workers decode and augment images as uint8 and the collate stacks uint8, so the batch
that crosses process boundaries (shared memory), the pinned-memory copy and PCIe is 4x smaller
than a float32 batch. The device then converts and normalises once per batch.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch


class DeviceNormalize:
    """``uint8 [B, C, H, W]`` on the host -> normalised ``float32 [B, C, H, W]`` on ``device``.

    The arithmetic is the one of ``to_tensor`` + ``Normalize`` (``x / 255``, then ``- mean``, then
    ``/ std``, in float32), so the result is bit-identical to normalising on the host. Floating
    point input is taken as already normalised and only moved.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if images.is_floating_point():
            return images
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 or floating-point images, got {images.dtype}")
        return images.float().div_(255).sub_(self.mean).div_(self.std)


def to_device(images: torch.Tensor, device: torch.device | str,
              normalize: DeviceNormalize | None = None) -> torch.Tensor:
    """Move a batch of images to ``device`` (non-blocking) and normalise uint8 input.

    uint8 input needs ``normalize`` (the statistics live there); float input is moved as it is.
    """
    if normalize is not None:
        return normalize(images)
    if not images.is_floating_point():
        raise ValueError("uint8 images need a DeviceNormalize with the data set's mean/std")
    return images.to(device, non_blocking=True)


def loader_kwargs(num_workers: int, device: torch.device | str, pin_memory: bool = True,
                  prefetch_factor: int | None = None) -> dict:
    """DataLoader options for a training loader: pinned memory on CUDA (so ``non_blocking`` copies
    are asynchronous), persistent workers and ``prefetch_factor`` batches per worker in flight."""
    kwargs: dict = {"num_workers": num_workers,
                    "pin_memory": bool(pin_memory) and torch.device(device).type == "cuda"}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return kwargs


def add_loader_args(parser: argparse.ArgumentParser) -> None:
    """``--prefetch_factor`` (the other loader flags, ``--num_workers``/``--pin_mem``, are shared)."""
    parser.add_argument("--prefetch_factor", default=4, type=int,
                        help="batches each DataLoader worker keeps ready (with --num_workers > 0)")
