"""Make each image's result independent of the batch it ran in (CPU).

PyTorch's CPU kernels choose their algorithm and work split by tensor shape: oneDNN convolutions
pick other blockings for other batch sizes, and small matrix products (the timestep embedding,
whose row count is the batch size) another kernel for few rows. Results then differ in the last
float bits, and after 20 denoising steps an image can differ by one level in a few pixels depending
on what else was in the batch.

In batch-invariant mode the convolutions of the UNet run on PyTorch's own convolution
(`thnn_conv2d`: one im2col and one matrix product of the same shape per sample, samples spread over
the threads), which is the same arithmetic for every sample whatever the batch size and nearly as
fast batched as oneDNN. Group norms run batched on NCHW tensors (their channels-last kernel, which
a one-sample tensor can fall into, differs by batch size), and the one-row-per-sample linear
layers run one sample at a time; they are tiny. Attention and the large matrix products over all
tokens are batch-invariant on the CPU as they are, so they stay batched. The text encoders get the
same treatment (their pooled output goes through a one-row-per-prompt projection). The VAE, which
runs once per image rather than once per step, encodes and decodes one image at a time. `bench/service.py`
measures the throughput of both modes; tests check the pixels.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch


def make_pipeline_batch_invariant(pipe) -> None:
    denoiser = getattr(pipe, "unet", None)
    if denoiser is not None:
        make_batch_invariant(denoiser)
    # The text encoders see every prompt of the batch at once; their pooled outputs go through a
    # projection of one row per prompt, whose kernel changes with the number of rows.
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if isinstance(encoder, torch.nn.Module):
            make_batch_invariant(encoder)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()  # encodes and decodes one image at a time: once per image, not per step


@contextlib.contextmanager
def batch_invariant(pipe) -> Iterator[None]:
    """The pipeline in batch-invariant mode for a while (drawing images with a model that is
    trained next, whose modules must then run their own kernels again)."""
    make_pipeline_batch_invariant(pipe)
    try:
        yield
    finally:
        for name in ("unet", "text_encoder", "text_encoder_2"):
            component = getattr(pipe, name, None)
            if isinstance(component, torch.nn.Module):
                undo_batch_invariant(component)
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, "disable_slicing"):
            vae.disable_slicing()


def undo_batch_invariant(*modules: torch.nn.Module) -> None:
    for root in modules:
        for module in root.modules():
            if module.__dict__.pop("_imagebot_per_sample", False):
                del module.forward  # the class's own forward again


def make_batch_invariant(*modules: torch.nn.Module) -> None:
    for root in modules:
        for module in root.modules():
            if getattr(module, "_imagebot_per_sample", False):
                continue
            if isinstance(module, torch.nn.Conv2d):
                module.forward = types.MethodType(_same_kernel_conv(type(module).forward), module)
                module._imagebot_per_sample = True
            elif isinstance(module, torch.nn.GroupNorm):
                module.forward = types.MethodType(_contiguous(type(module).forward), module)
                module._imagebot_per_sample = True
            elif isinstance(module, torch.nn.Linear):
                module.forward = types.MethodType(_per_row(type(module).forward), module)
                module._imagebot_per_sample = True


def _same_kernel_conv(forward):
    def run(self, x, *args, **kwargs):
        if (x.device.type == "cpu" and x.dim() == 4 and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == "zeros" and not isinstance(self.padding, str) and not args and not kwargs):
            return torch._C._nn.thnn_conv2d(x, self.weight, self.kernel_size, self.bias, self.stride, self.padding)
        # Any other convolution (or device): one sample at a time, which is invariant everywhere.
        if x.dim() < 2 or x.shape[0] == 1:
            return forward(self, x, *args, **kwargs)
        return torch.cat([forward(self, x[i: i + 1], *args, **kwargs) for i in range(x.shape[0])])
    return run


def _contiguous(forward):
    def run(self, x, *args, **kwargs):
        # The CPU group norm of an NCHW tensor is the same arithmetic for every sample at any batch
        # size; its channels-last kernel is not, and a one-sample tensor can look channels-last.
        return forward(self, x.contiguous(), *args, **kwargs)
    return run


def _per_row(forward):
    def run(self, x, *args, **kwargs):
        # Only 2-D inputs (one row per sample) are at risk; [batch, tokens, channels] inputs
        # have many rows per sample and use the same kernel at every batch size.
        if x.dim() != 2 or x.shape[0] == 1:
            return forward(self, x, *args, **kwargs)
        return torch.cat([forward(self, x[i: i + 1], *args, **kwargs) for i in range(x.shape[0])])
    return run
