"""Make each image's result independent of the batch it ran in (CPU).

PyTorch's CPU kernels choose their algorithm and work split by tensor shape: convolutions and
group norms take other paths for other batch sizes, and small matrix products (the timestep
embedding, whose row count is the batch size) another one for few rows. Results then differ in
the last float bits, and after 20 denoising steps an image can differ by one level in a few pixels
depending on what else was in the batch.

In batch-invariant mode the UNet's convolutions, group norms and one-row-per-sample linear layers
run one sample at a time, and the VAE decodes one image at a time, so every image goes through
exactly the same kernels whatever the batch. The rest of the UNet (attention and the large matrix
products over all tokens, where most of the time goes) still runs batched, and so does the text
encoder. Batching still pays, less than without this mode (`bench/engine.py` measures both on
the machine at hand), and identity is exact.
"""

from __future__ import annotations

import types

import torch


def make_pipeline_batch_invariant(pipe) -> None:
    denoiser = getattr(pipe, "unet", None)
    if denoiser is not None:
        make_batch_invariant(denoiser)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()


def make_batch_invariant(*modules: torch.nn.Module) -> None:
    for root in modules:
        for module in root.modules():
            if getattr(module, "_imagebot_per_sample", False):
                continue
            if isinstance(module, (torch.nn.Conv2d, torch.nn.GroupNorm)):
                module.forward = types.MethodType(_per_sample(type(module).forward), module)
                module._imagebot_per_sample = True
            elif isinstance(module, torch.nn.Linear):
                module.forward = types.MethodType(_per_row(type(module).forward), module)
                module._imagebot_per_sample = True


def _per_sample(forward):
    def run(self, x, *args, **kwargs):
        if x.dim() < 2 or x.shape[0] == 1:
            return forward(self, x, *args, **kwargs)
        return torch.cat([forward(self, x[i: i + 1], *args, **kwargs) for i in range(x.shape[0])])
    return run


def _per_row(forward):
    def run(self, x, *args, **kwargs):
        # Only 2-D inputs (one row per sample) are at risk; [batch, tokens, channels] inputs
        # have many rows per sample and use the same kernel at every batch size.
        if x.dim() != 2 or x.shape[0] == 1:
            return forward(self, x, *args, **kwargs)
        return torch.cat([forward(self, x[i: i + 1], *args, **kwargs) for i in range(x.shape[0])])
    return run
