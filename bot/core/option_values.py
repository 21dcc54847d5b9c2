"""Typed values from what users typed: numbers, switches, sizes, aspects, LoRAs, names.

Values arrive as text (chat flags, slash-command options, CLI flags) or already typed (HTTP JSON);
both get the same checks and the same `UserError` messages, which quote at most a short piece of
what was typed (`shorten`).
"""

from __future__ import annotations

import math
import re

from bot.core.errors import UserError
from bot.core.prompt_syntax import parse_lora_weight
from bot.models.variant import MODEL_NAME, SCHEDULERS

LORA_EXAMPLE = "--lora demo-finetuned:0.8"  # shown when a --lora value cannot be read


def parse_seed(value: object) -> int | None:
    """-1 means "random", as in AUTOMATIC1111 and ComfyUI."""
    if value is None:
        return None
    seed = to_int("seed", value)
    return None if seed == -1 else seed


def to_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise UserError("not_integer", name=name, got=value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d{1,40}", text):
        return int(text)
    raise UserError("not_integer", name=name, got=shorten(text))


def to_bool(name: str, value: object) -> bool:
    """A switch: JSON true/false, or on/off, yes/no, true/false, 1/0 as typed."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise UserError("not_switch", name=name, got=shorten(text))


def to_float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise UserError("not_number", name=name, got=value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise UserError("not_number", name=name, got=shorten(str(value))) from None
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?(\d{1,6}(\.\d*)?|\.\d+)", text):
            raise UserError("not_number", name=name, got=shorten(text))
        number = float(text)
    if not math.isfinite(number):
        raise UserError("not_number", name=name, got=value)
    return number


def parse_size(value: object) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX×*]\s*(\d{1,6})\s*", str(value))
    if not match:
        raise UserError("bad_size", got=shorten(str(value)))
    return int(match.group(1)), int(match.group(2))


def parse_aspect(value: object) -> tuple[int, int]:
    if isinstance(value, tuple) and len(value) == 2:
        value = f"{value[0]}:{value[1]}"
    match = re.fullmatch(r"\s*(\d{1,3})\s*[:/xX]\s*(\d{1,3})\s*", str(value))
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise UserError("bad_aspect", got=shorten(str(value)))
    w, h = int(match.group(1)), int(match.group(2))
    if not 0.25 <= w / h <= 4:
        raise UserError("aspect_out_of_range", got=f"{w}:{h}")
    return w, h


def parse_loras(value: object) -> tuple[tuple[str, float], ...] | None:
    """`--lora NAME:W` values: "a:0.8, b" (text), or a list of such texts or [name, weight] pairs
    (JSON). A missing weight is 1."""
    if isinstance(value, str):
        parts: list[object] = [part for part in re.split(r"[,\s]+", value) if part]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise UserError("flag_needs_value", flag="lora", example=LORA_EXAMPLE)
    loras = []
    for part in parts:
        if isinstance(part, (list, tuple)) and len(part) == 2:
            name, weight = part
        elif isinstance(part, str):
            name, _, weight = part.partition(":")
            weight = weight or "1"
        else:
            raise UserError("flag_needs_value", flag="lora", example=LORA_EXAMPLE)
        name = parse_model_name(name)
        loras.append((name, parse_lora_weight(name, str(weight))))
    return tuple(loras) or None


def parse_refiner(value: object) -> float:
    """Where the refiner takes over, as a fraction of the steps: 0 (no refiner) up to below 1.
    "off" is 0 too."""
    if isinstance(value, str) and value.strip().lower() in ("off", "no", "none"):
        return 0.0
    switch = to_float("refiner", value)
    if not 0 <= switch < 1:
        raise UserError("refiner_out_of_range", got=switch)
    return switch


def parse_model_name(value: object) -> str:
    name = str(value).strip()
    if not MODEL_NAME.fullmatch(name):
        raise UserError("bad_model_name", got=shorten(name))
    return name


def parse_scheduler(value: object) -> str:
    name = str(value).strip().lower().replace(" ", "_")
    if name not in SCHEDULERS:
        raise UserError("unknown_scheduler", got=shorten(name), allowed=", ".join(SCHEDULERS))
    return name


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
