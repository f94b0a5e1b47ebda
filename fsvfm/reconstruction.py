"""Masked faces and their reconstructions as images, without the face stack (no dlib, OpenCV or matplotlib):
the panels of ``fsvfm.visualize``'s figures and pre-training's TensorBoard grids (``PretrainImageLogger``).

Reconstructions follow MAE's demo: with ``norm_pix_loss`` the network predicts per-patch normalised pixels,
which are mapped back with each patch's own mean and variance (taken from the input image) before undoing the
data-set normalisation.
"""
from __future__ import annotations

import torch
from torchvision.utils import make_grid

from fsvfm.data.device import DeviceNormalize
from fsvfm.masking import NUM_CHOOSABLE_REGIONS, crfrp_masks

MASK_GREY = 0.5                                          # fill of masked patches in the masked input
SHADE, SHADE_RGB, REGION_RGB = 0.55, (0.25, 0.25, 0.25), (0.9, 0.15, 0.15)
TB_IMAGE_TAG, TB_NUM_FACES = "crfrp_reconstruction", 8


def patch_pixels(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch mask [N, L] -> pixel mask [N, 1, S, S] (S = sqrt(L) * patch_size), same dtype."""
    g = int(round(mask.shape[1] ** 0.5))
    grid = mask.reshape(mask.shape[0], 1, g, g)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, imgs: torch.Tensor, img_mask: torch.Tensor) -> torch.Tensor:
    """Pixel-decoder output of the online network as an image, in the input's normalised space.

    imgs: [N, 3, S, S] normalised, on the model's device; img_mask: [N, L] (1 = masked, the same count in
    every row; best on the CPU, where the model reads the count). Returns float [N, 3, S, S]. With
    ``norm_pix_loss`` each predicted patch gets the mean and (unbiased) variance of that patch of
    ``imgs`` back, as in the loss target and MAE's demo.
    """
    was_training = model.training
    model.eval()
    try:
        latent, ids_restore = model.forward_encoder(imgs, img_mask)
        pred = model.forward_decoder(latent, ids_restore).float()
    finally:
        model.train(was_training)
    if model.norm_pix_loss:
        target = model.patchify(imgs.float())
        pred = pred * (target.var(dim=-1, keepdim=True) + 1.0e-6).sqrt() + target.mean(dim=-1, keepdim=True)
    return model.unpatchify(pred)


def masking_views(images: torch.Tensor, img_mask: torch.Tensor, region_mask: torch.Tensor, patch_size: int,
                  reconstruction: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The panels of a masked face, all float [N, 3, S, S] in [0, 1].

    images: [N, 3, S, S] in [0, 1]; img_mask, region_mask: [N, L] (1 = masked / in the covered
    region); reconstruction: [N, 3, S, S] in [0, 1] or None. Keys: ``mask`` (masked patches
    shaded, the covered region red), ``masked`` (what the encoder sees, masked patches grey), and
    with a reconstruction ``reconstruction`` and ``pasted`` (reconstruction in the masked patches,
    the input in the visible ones).
    """
    masked_px = patch_pixels(img_mask.float(), patch_size).bool()
    region_px = patch_pixels(region_mask.float(), patch_size).bool()
    colour = torch.where(region_px, torch.tensor(REGION_RGB).view(1, 3, 1, 1),
                         torch.tensor(SHADE_RGB).view(1, 3, 1, 1))
    views = {"mask": torch.where(masked_px, (1 - SHADE) * images + SHADE * colour, images),
             "masked": torch.where(masked_px, torch.full_like(images, MASK_GREY), images)}
    if reconstruction is not None:
        views["reconstruction"] = reconstruction
        views["pasted"] = torch.where(masked_px, reconstruction, images)
    return views


def denormalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)


class PretrainImageLogger:
    """Every ``vis_freq`` epochs, a TensorBoard grid of fixed faces: input, CRFR-P mask, reconstruction.

    The faces (evenly spaced over the data set) and their masks (region ``i mod 6`` for face ``i``,
    seeded) are drawn once, so the grids of different epochs compare like with like. The items'
    ``image`` is uint8 [3,S,S] as the pre-training workers deliver it (normalised here with
    ``mean``/``std`` by the engine's ``DeviceNormalize``) or float, already normalised. Rows of the
    grid: input, mask, reconstruction, reconstruction pasted into the visible patches. Runs only
    where a SummaryWriter exists (rank 0); off with ``vis_freq = 0``.
    """

    def __init__(self, writer, dataset, mean, std, patch_size: int, mask_ratio: float, vis_freq: int,
                 num_faces: int = TB_NUM_FACES, seed: int = 0) -> None:
        self.writer, self.mean, self.std = writer, list(mean), list(std)
        self.patch_size, self.vis_freq = patch_size, vis_freq
        self.images = self.img_mask = self.region_mask = None
        if writer is None or vis_freq <= 0:
            return
        n = min(num_faces, len(dataset))
        items = [dataset[int(i)] for i in torch.linspace(0, len(dataset) - 1, n).round().long().unique()]
        self.images = DeviceNormalize(self.mean, self.std, "cpu")(torch.stack([it["image"] for it in items]))
        gen = torch.Generator().manual_seed(seed)
        masks = [crfrp_masks(it["parsing_map"], patch_size, mask_ratio, region=i % NUM_CHOOSABLE_REGIONS,
                             generator=gen)[:2] for i, it in enumerate(items)]
        self.img_mask = torch.cat([m[0] for m in masks])
        self.region_mask = torch.cat([m[1] for m in masks])

    def grid(self, model: torch.nn.Module) -> torch.Tensor:
        """The image grid, float [3, H, W] in [0, 1] (4 rows of the fixed faces)."""
        dev = next(model.parameters()).device
        recon = reconstruct(model, self.images.to(dev), self.img_mask).cpu()
        images = denormalise(self.images, self.mean, self.std)
        views = masking_views(images, self.img_mask, self.region_mask, self.patch_size,
                              denormalise(recon, self.mean, self.std))
        rows = [images, views["mask"], views["reconstruction"], views["pasted"]]
        return make_grid(torch.cat(rows), nrow=len(images), padding=2, pad_value=1.0)

    def __call__(self, model: torch.nn.Module, epoch: int) -> None:
        if self.images is None or (epoch + 1) % self.vis_freq:
            return
        self.writer.add_image(TB_IMAGE_TAG, self.grid(model), epoch)
        self.writer.flush()
