"""Hooks several families share, as thin forwarders that import their torch code when called.

A family module stays importable without torch (the model store and the core read its traits), so
it names these instead of importing the engine modules that do the work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence


def clip_call_arguments(pipe: Any, prompts: Sequence[str], negatives: Sequence[str], request: Any) -> dict:
    """CLIP text encoders (SD 1.x, 2.x, SDXL): A1111 weights and long prompts through compel."""
    from bot.engine.prompts import clip_call_arguments as arguments

    return arguments(pipe, prompts, negatives, request)


def sd_scheduler(name: str, config: Mapping[str, Any]) -> Any:
    """The discrete-time schedulers of the UNet families, built from the model's own config."""
    from bot.engine.schedulers import make_scheduler

    return make_scheduler(name, config)


def flow_scheduler(name: str, config: Mapping[str, Any]) -> Any:
    """The flow-matching families' scheduler, from the model's own config (shift, dynamic shifting)."""
    from bot.engine.schedulers import make_flow_scheduler

    return make_flow_scheduler(name, config)


def transformer_file(spec: Any, dtype: Any) -> Any:
    """A diffusion transformer from one file (original or diffusers layout, .safetensors or GGUF)
    in the pipeline of the variant that `components = "..."` names (text encoders, VAE, tokenizers)."""
    from bot.engine.transformer_files import load_transformer_pipeline

    return load_transformer_pipeline(spec, dtype)


def flow_text_arguments(prompts: Sequence[str], negatives: Sequence[str], guidance: float, *,
                        tokens: int, negative: bool = True, **extra: Any) -> dict:
    """Plain text for pipelines that encode it themselves (T5 and LLM text encoders have no
    A1111 weights), read up to `tokens` tokens natively."""
    arguments: dict[str, Any] = dict(prompt=list(prompts), guidance_scale=guidance, max_sequence_length=tokens)
    if negative:
        arguments["negative_prompt"] = list(negatives)
    return {**arguments, **extra}


def sd_single_file(spec: Any, dtype: Any) -> Any:
    """An original-layout SD 1.x/2.x/SDXL checkpoint with the shipped architecture configs."""
    from bot.engine.single_file import load_spec_file

    return load_spec_file(spec, dtype)


def read_config(folder: Path, component: str) -> dict:
    """A component's config.json in a pipeline folder ({} when missing or unreadable)."""
    return _read_json(folder / component / "config.json")


def read_index(folder: Path) -> dict:
    """A pipeline folder's model_index.json ({} when missing or unreadable)."""
    return _read_json(folder / "model_index.json")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
