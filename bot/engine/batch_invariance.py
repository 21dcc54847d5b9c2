"""Make each image's result independent of the batch it ran in (CPU).

PyTorch's CPU kernels choose their algorithm and work split by tensor shape: oneDNN convolutions
pick other blockings for other batch sizes, and matrix products another kernel for few rows (the
timestep embedding, whose row count is the batch size); with several threads, MKL's matrix product
also splits the inner sums of products with up to a few hundred rows differently by row count (at
FLUX's widths, 512 text tokens alone and 1,024 in a batch of two), and a convolution's product runs
on all threads alone but on one inside a batch. Results then differ in the last float bits, and
after 20 denoising steps an image can differ by one level in a few pixels depending on what else
was in the batch.

In batch-invariant mode every network of the pipeline but the VAE is treated; the VAE, which runs
once per image rather than once per step, encodes and decodes one image at a time.

A UNet's convolutions run on PyTorch's own convolution (`thnn_conv2d`: one im2col and one matrix
product of the same shape per sample, samples spread over the threads), nearly as fast batched as
oneDNN. Its group norms run batched on NCHW tensors (their channels-last kernel, which a one-sample
tensor can fall into, differs by batch size), its one-row-per-sample linear layers one sample at a
time, and its token-wide products and attention batched. That is the same arithmetic for every
sample at the tiny widths of the tests; at SD's real widths it is not (the MKL effects above;
docs/performance.md has the numbers), and running a UNet's products one sample at a time as below
would cost it 1.7x of its batched throughput on the tiny model.

Every other network (a diffusion transformer, the CLIP, T5 and Qwen text encoders) runs its
linear layers and convolutions one sample at a time, with the shapes and threads an image alone
has; at real widths that costs little, since each sample's product is large. Its attention stays
batched where there is no mask (the attention kernel works per sample and head). Attention with a
mask (prompts padded to the longest in the batch, causal text encoders) runs one sample at a time
over the keys that sample can see, as it would alone.

`bench/service.py` measures the throughput of both modes, `bench/batch_invariance.py` each
family's pixels; tests check the pixels (tests/engine/test_dit_batch_identity.py also at FLUX's
real widths).
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

import torch
from diffusers import UNet2DConditionModel
from torch.overrides import TorchFunctionMode


def make_pipeline_batch_invariant(pipe) -> None:
    # Every network but the VAE runs with a batch dimension: the denoiser (UNet or transformer) and
    # the text encoders, which see every prompt of the batch at once (their pooled outputs go through
    # a projection of one row per prompt, whose kernel changes with the number of rows).
    for module in _networks(pipe):
        make_batch_invariant(module)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()  # encodes and decodes one image at a time: once per image, not per step


def _networks(pipe) -> list[torch.nn.Module]:
    """The pipeline's networks other than the VAE, whatever the family calls them (unet,
    transformer, text_encoder, text_encoder_2, text_encoder_3, ...)."""
    return [module for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module) and name != "vae"]


@contextlib.contextmanager
def batch_invariant(pipe) -> Iterator[None]:
    """The pipeline in batch-invariant mode for a while (drawing images with a model that is
    trained next, whose modules must then run their own kernels again)."""
    make_pipeline_batch_invariant(pipe)
    try:
        yield
    finally:
        undo_batch_invariant(*_networks(pipe))
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, "disable_slicing"):
            vae.disable_slicing()


def undo_batch_invariant(*modules: torch.nn.Module) -> None:
    for root in modules:
        for module in root.modules():
            if module.__dict__.pop("_imagebot_per_sample", False):
                del module.forward  # the class's own forward again
                before = module.__dict__.pop("_imagebot_forward_before", None)
                if before is not None:
                    module.forward = before  # a forward someone else had put there (offloading hooks)


def make_batch_invariant(*modules: torch.nn.Module) -> None:
    for root in modules:
        # A UNet keeps its batched products (measured invariant at the tiny widths of the tests, and
        # fast); every other network runs its products one sample at a time, with the shapes and
        # threads it has alone: the CPU's matrix product splits its sums by row count and threads.
        unet = isinstance(root, UNet2DConditionModel)
        if not unet and not getattr(root, "_imagebot_per_sample", False):
            before = root.__dict__.get("forward")
            if before is not None:
                root._imagebot_forward_before = before
            root.forward = types.MethodType(_masked_attention_per_sample(before or type(root).forward,
                                                                         bound=before is not None), root)
            root._imagebot_per_sample = True
        for module in root.modules():
            if getattr(module, "_imagebot_per_sample", False):
                continue
            if isinstance(module, torch.nn.Conv2d):
                wrap = _same_kernel_conv if unet else _per_sample
            elif isinstance(module, torch.nn.GroupNorm):
                wrap = _contiguous
            elif isinstance(module, torch.nn.Linear):
                wrap = _per_row if unet else _per_sample
            else:
                continue
            module.forward = types.MethodType(wrap(type(module).forward), module)
            module._imagebot_per_sample = True


def _masked_attention_per_sample(forward, bound: bool):
    def run(self, *args, **kwargs):
        with _AttentionPerSample():
            return forward(*args, **kwargs) if bound else forward(self, *args, **kwargs)
    return run


class _AttentionPerSample(TorchFunctionMode):
    """Attention with a mask, one sample at a time over the keys that sample can see.

    A batch pads its prompts to the longest (Qwen-Image's text, its transformer's joint text and
    image tokens) and masks the padding; a prompt alone has none. The CPU attention kernel sums over
    however many keys there are, masked or not, so the same prompt's tokens come out a few float
    bits apart padded and unpadded. Dropping the keys no query of the sample can see gives each
    sample the sum it has alone. Unmasked attention is batch-invariant as it is and stays batched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            return _attention_per_sample(*args, **kwargs)
        return func(*args, **kwargs)


def _attention_per_sample(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                          enable_gqa=False):
    attention = functools.partial(torch.nn.functional.scaled_dot_product_attention, dropout_p=dropout_p,
                                  scale=scale, enable_gqa=enable_gqa)
    if query.device.type != "cpu" or query.dim() != 4 or key.dim() != 4 or (attn_mask is None and not is_causal):
        return attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal)
    keys = key.shape[-2]
    mask = attn_mask
    if is_causal:  # as an explicit mask, the same whether the caller said is_causal or built the mask
        mask = torch.ones(query.shape[-2], keys, dtype=torch.bool, device=query.device).tril()
    mask = mask if mask.dim() == 4 else mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    out = []
    for i in range(query.shape[0]):
        own = mask[i: i + 1] if mask.shape[0] > 1 else mask
        # Additive masks hide a key with -inf or the dtype's lowest value (exp of it is 0 either way).
        visible = own if own.dtype == torch.bool else own > torch.finfo(own.dtype).min
        visible = torch.broadcast_to(visible, (*visible.shape[:-1], keys)).reshape(-1, keys).any(dim=0)
        k, v = (t[i: i + 1] if t.shape[0] > 1 else t for t in (key, value))
        if not visible.all() and visible.any():
            kept = visible.nonzero().squeeze(1)
            own, k, v = own[..., kept] if own.shape[-1] > 1 else own, k[:, :, kept], v[:, :, kept]
        nothing_hidden = own.all() if own.dtype == torch.bool else not own.any()
        out.append(attention(query[i: i + 1], k, v, attn_mask=None if nothing_hidden else own))
    return torch.cat(out)


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
        # 2-D inputs (one row per sample) take another kernel for other row counts; a UNet's
        # [batch, tokens, channels] inputs kept the same results at the widths measured.
        if x.dim() != 2 or x.shape[0] == 1:
            return forward(self, x, *args, **kwargs)
        return torch.cat([forward(self, x[i: i + 1], *args, **kwargs) for i in range(x.shape[0])])
    return run


def _per_sample(forward):
    def run(self, x, *args, **kwargs):
        # One call per sample ([batch, ...] inputs; a 2-D input's rows, which are samples or, for
        # a few transformers, tokens of several samples): the same call an image alone makes.
        if x.dim() < 2 or x.shape[0] == 1:
            return forward(self, x, *args, **kwargs)
        return torch.cat([forward(self, x[i: i + 1], *args, **kwargs) for i in range(x.shape[0])])
    return run
