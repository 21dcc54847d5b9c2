"""`imagebot doctor`: what the bot would run on and with, before anything is started.

One line per fact, each saying what to do when it is not what you want: torch and its build, the
device, number format and attention the engine would pick, free memory, the models (and the memory
each full model will take, quantized or not), and which frontends `serve` would start.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from bot.config import Config, Secrets


def report(config: Config, secrets: Secrets) -> list[str]:
    return [*_engine_lines(config), *_model_lines(config), *_frontend_lines(config, secrets)]


def _engine_lines(config: Config) -> list[str]:
    import torch

    from bot.engine.devices import EngineSetupError, check_offload, pick_device, pick_dtype

    cuda = torch.version.cuda
    lines = [f"torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU-only build'})"]
    try:
        device = pick_device(config.engine)
        check_offload(config.engine, device)
        dtype = pick_dtype(config.engine, device)
    except EngineSetupError as error:
        return [*lines, f"device: cannot be used: {error}"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    lines.append(f"device: {device.type} ({name}); engine.device = {config.engine.device!r}")
    lines.append(f"number format: {str(dtype).removeprefix('torch.')}; engine.dtype = {config.engine.dtype!r}")
    lines.append(_attention_line(config))
    lines.append(_memory_line(torch, device))
    return lines


def _attention_line(config: Config) -> str:
    installed = importlib.util.find_spec("xformers") is not None
    if config.engine.attention == "xformers":
        state = "installed" if installed else "NOT installed: pip install -e \".[xformers]\""
        return f"attention: xformers ({state})"
    return f"attention: PyTorch SDPA (xformers {'installed' if installed else 'not installed'}; " \
           "engine.attention = \"xformers\" to use it)"


def _memory_line(torch, device) -> str:
    gib = 2**30
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return f"GPU memory: {free / gib:.1f} GiB free of {total / gib:.1f} GiB"
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # Windows has no sysconf
        return "memory: unknown on this system"
    return f"memory: {free / gib:.1f} GiB free of {total / gib:.1f} GiB"


def _model_lines(config: Config) -> list[str]:
    from bot.models.registry import Registry

    registry = Registry(Path(config.storage.models_dir), config.variants, config.models.rescan_seconds)
    registry.scan()
    entries = registry.entries()
    ready = [entry.name for entry in entries if entry.ready]
    lines = [f"models in {config.storage.models_dir}: {', '.join(ready) or 'none ready'}; "
             f"default {config.models.default!r}"
             + ("" if config.models.default in ready else " (NOT ready: set [models] default or add it)")]
    lines += [f"model {entry.name}: cannot be used: {entry.error}" for entry in entries if entry.error]
    return lines + _model_size_lines(config, [entry.spec for entry in entries if entry.ready and entry.spec])


def _model_size_lines(config: Config, specs) -> list[str]:
    """What each ready full model will take on the engine's device (the estimate the memory
    budget counts before loading), with its quantize mode and what it quantizes; or why the mode
    cannot run here."""
    from bot.engine.devices import EngineSetupError, pick_device
    from bot.engine.loader import quantizable, weight_file_bytes
    from bot.engine.quantize import QuantizeUnsupported, check_supported
    from bot.models.spec import FULL_MODEL_KINDS

    try:
        device = pick_device(config.engine)
    except EngineSetupError:  # the device line says why already
        return []
    lines = []
    for spec in specs:
        if spec.kind not in FULL_MODEL_KINDS:
            continue
        try:
            check_supported(spec.quantize, device)
        except QuantizeUnsupported as error:
            lines.append(f"model {spec.name}: cannot be used here: {error}")
            continue
        family = spec.defaults.family
        components = quantizable(spec)
        size = weight_file_bytes(spec, components)
        what = f"~{_size(size)} on {device.type}" if size else f"size not known until downloaded; runs on {device.type}"
        lines.append(f"model {spec.name} ({family.label}): {what}"
                     + (f" ({spec.quantize}: {', '.join(components)})" if spec.quantize != "none" else ""))
    return lines


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 / 10 else f"{nbytes / 2**20:.1f} MiB"


def _frontend_lines(config: Config, secrets: Secrets) -> list[str]:
    web = config.web
    lines = [f"web: would listen on http://{web.host}:{web.port}" if web.enabled else "web: off ([web] enabled)"]
    for name, variable, token in (("discord", "DISCORD_TOKEN", secrets.discord_token),
                                  ("telegram", "TELEGRAM_TOKEN", secrets.telegram_token)):
        if not token:
            lines.append(f"{name}: off ({variable} not set)")
        elif importlib.util.find_spec(name) is None:
            lines.append(f"{name}: {variable} is set but the library is missing: pip install -e \".[{name}]\"")
        else:
            lines.append(f"{name}: would start ({variable} set)")
    return lines
