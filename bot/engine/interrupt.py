"""Cancellation inside a denoising step, not only between steps.

One step of a large model at a large size on a slow device can take a minute; a user who cancels
should not wait for it. Forward hooks on the denoiser's and the VAE decoder's building blocks ask
the cancel check before each block runs (a few dozen cheap calls a step) and raise `Cancelled`,
which leaves the pipeline at once. The hooks exist only for the duration of one pipeline call.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from bot.core.errors import Cancelled

# The blocks a step is made of, in every Stable Diffusion family's UNet and VAE decoder.
BLOCKS = ("ResnetBlock2D", "Transformer2DModel", "BasicTransformerBlock", "UpDecoderBlock2D")


@contextlib.contextmanager
def stoppable(pipe, should_cancel: Callable[[], bool] | None) -> Iterator[None]:
    if should_cancel is None:
        yield
        return

    def check(module: torch.nn.Module, args: object) -> None:
        if should_cancel():
            raise Cancelled()

    handles = []
    for model in (getattr(pipe, "unet", None), getattr(pipe, "transformer", None), getattr(pipe, "vae", None)):
        if isinstance(model, torch.nn.Module):
            handles += [module.register_forward_pre_hook(check) for module in model.modules()
                        if type(module).__name__ in BLOCKS]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
