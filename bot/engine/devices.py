"""Which device and number format to run on, and how much memory models may occupy."""

from __future__ import annotations

import logging
import os

import torch

from bot.config import EngineConfig

log = logging.getLogger(__name__)


class EngineSetupError(RuntimeError):
    """The engine settings cannot work on this machine; the message says what to change."""


def pick_device(config: EngineConfig) -> torch.device:
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if config.device == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if config.device == "cuda" and not cuda:
        raise EngineSetupError("engine.device is 'cuda' but torch sees no CUDA GPU. Install a CUDA build of "
                               "torch (see docs/install.md) or set engine.device = \"auto\".")
    if config.device == "mps" and not mps:
        raise EngineSetupError("engine.device is 'mps' but Apple's Metal backend is not available here; "
                               "set engine.device = \"auto\".")
    if config.device.startswith("cuda:"):  # one of [engine] devices
        index = int(config.device.split(":", 1)[1])
        if not cuda or index >= torch.cuda.device_count():
            seen = torch.cuda.device_count() if cuda else 0
            raise EngineSetupError(f"engine.devices lists {config.device!r} but torch sees {seen} CUDA GPU(s) "
                                   f"(cuda:0 to cuda:{seen - 1}); list only those." if seen else
                                   f"engine.devices lists {config.device!r} but torch sees no CUDA GPU.")
    return torch.device(config.device)


def check_offload(config: EngineConfig, device: torch.device) -> None:
    """cpu_offload keeps weights in CPU memory and moves each part to the GPU when it runs
    ("model": a whole component at a time; "sequential": layer by layer, least memory, slowest).
    Only CUDA has that hook in diffusers; elsewhere there is nothing to offload to."""
    if config.cpu_offload != "none" and device.type != "cuda":
        raise EngineSetupError(
            f"engine.cpu_offload = \"{config.cpu_offload}\" moves weights between CPU memory and a CUDA GPU, "
            f"but the engine runs on {device.type}; set engine.cpu_offload = \"none\" or run on a CUDA GPU "
            "(engine.device = \"cuda\").")
    if config.cpu_offload == "sequential" and config.compile:
        raise EngineSetupError("engine.cpu_offload = \"sequential\" moves each layer's weights as it runs, which "
                               "torch.compile cannot follow; set engine.compile = false or cpu_offload = \"model\".")


def pick_dtype(config: EngineConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        # Half precision halves memory and roughly doubles speed on GPUs; CPUs are fastest (and
        # only exact) in float32.
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    dtype = getattr(torch, config.dtype)
    if device.type == "cpu" and dtype is torch.float16:
        raise EngineSetupError("engine.dtype = \"float16\" does not run on the CPU; use \"float32\" or \"bfloat16\".")
    return dtype


def memory_budget_bytes(config: EngineConfig, device: torch.device) -> int:
    if config.memory_budget_gb > 0:
        return int(config.memory_budget_gb * 2**30)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError, AttributeError):  # Windows has no sysconf
        return 8 * 2**30


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())
