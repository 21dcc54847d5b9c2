"""AUTOMATIC1111 prompt syntax: attention weights and LoRA tags.

Prompts copied from model sites are written for AUTOMATIC1111: `(word:1.3)` sets a weight,
`(word)` multiplies it by 1.1, `[word]` divides it by 1.1, `\\(` is a literal bracket, and
`<lora:NAME:WEIGHT>` applies a LoRA. This module splits such a prompt into (text, weight)
fragments, which the engine hands to compel (the library that does the weighting and encodes
prompts longer than the text encoder's window in chunks), and finds the LoRA tags. It checks
the syntax when a request is made, so a bad weight is refused with a clear message instead of
failing later on the GPU worker. No torch here: the core calls it.
"""

from __future__ import annotations

import re

from bot.core.errors import UserError

UP = 1.1  # (word) and [word], as AUTOMATIC1111 weighs them
MAX_WEIGHT = 10.0

# <lora:NAME> or <lora:NAME:WEIGHT>; A1111 also accepts a second (text-encoder) weight, which we
# refuse rather than ignore silently.
LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^<>]*))?>", re.IGNORECASE)

# Tokens of the attention syntax (A1111's own tokenizer regex, modules/prompt_parser.py).
_TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([^()\[\]:]*?)\s*\)|\)|]|[^\\()\[\]:]+|:")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_SYNTAX = re.compile(r"[()\[\]\\]")


def has_weights(prompt: str) -> bool:
    """Whether the prompt uses the attention syntax at all (brackets or escapes)."""
    return bool(_SYNTAX.search(strip_lora_tags(prompt)))


def strip_lora_tags(prompt: str) -> str:
    """The prompt without its `<lora:...>` tags: what the text encoder should read."""
    return re.sub(r"\s{2,}", " ", LORA_TAG.sub(" ", prompt)).strip()


def lora_tags(prompt: str) -> list[tuple[str, float]]:
    """The `<lora:NAME:WEIGHT>` tags of a prompt as (name, weight), weight 1 when not given."""
    found = []
    for match in LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), match.group(2)
        found.append((name, 1.0 if weight is None else parse_lora_weight(name, weight)))
    return found


def prompt_with_lora_tags(prompt: str, loras) -> str:
    """The prompt as typed, plus a `<lora:NAME:W>` tag for each LoRA that came from a --lora flag
    rather than the prompt: the text that, pasted into AUTOMATIC1111 or edited in a Remix, applies
    the same LoRAs."""
    extra = [f"<lora:{name}:{weight:g}>" for name, weight in loras
             if not re.search(rf"<lora:{re.escape(name)}[:>]", prompt, re.IGNORECASE)]
    return " ".join([prompt, *extra]) if extra else prompt


def parse_lora_weight(name: str, text: str) -> float:
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise UserError("lora_weight_bad", name=_short(name), got=_short(text))
    weight = float(text)
    if not -MAX_WEIGHT <= weight <= MAX_WEIGHT:
        raise UserError("lora_weight_bad", name=_short(name), got=_short(text))
    return weight


def weighted_fragments(prompt: str) -> list[tuple[str, float]]:
    """The prompt (LoRA tags removed) as (text, weight) fragments, neighbours of equal weight
    merged; a UserError names what cannot be read (an unclosed bracket, a weight that is no
    number, one out of range)."""
    text = strip_lora_tags(prompt)
    fragments: list[list] = []  # [text, weight]
    round_open: list[int] = []  # index in `fragments` where each open "(" began
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            fragments.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif weight is not None:  # ":1.3)" closes a round bracket with an explicit weight
            if not round_open:
                raise UserError("prompt_weights_bad", problem=f"')' without '(' near {_near(text, match)}")
            multiply(round_open.pop(), _weight(weight, text, match))
        elif token == ")":
            if not round_open:
                raise UserError("prompt_weights_bad", problem=f"')' without '(' near {_near(text, match)}")
            multiply(round_open.pop(), UP)
        elif token == "]":
            if not square_open:
                raise UserError("prompt_weights_bad", problem=f"']' without '[' near {_near(text, match)}")
            multiply(square_open.pop(), 1 / UP)
        else:
            fragments.append([token, 1.0])
    if round_open or square_open:
        bracket = "(" if round_open else "["
        raise UserError("prompt_weights_bad", problem=f"'{bracket}' is never closed")

    merged: list[tuple[str, float]] = []
    for piece, weight in fragments:
        if merged and abs(merged[-1][1] - weight) < 1e-9:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return [(piece, weight) for piece, weight in merged if piece.strip()] or [("", 1.0)]


def check_prompt_syntax(prompt: str) -> None:
    """Refuse a prompt whose weights or LoRA tags cannot be read (UserError)."""
    lora_tags(prompt)
    weighted_fragments(prompt)


def _weight(text: str, prompt: str, match: re.Match[str]) -> float:
    if not _NUMBER.fullmatch(text):
        raise UserError("prompt_weights_bad", problem=f"the weight '{_short(text)}' in {_near(prompt, match)} "
                                                      "is not a number (write it as (word:1.3))")
    weight = float(text)
    if not 0 <= weight <= MAX_WEIGHT:
        raise UserError("prompt_weights_bad", problem=f"the weight {_short(text)} is outside 0-{MAX_WEIGHT:g}")
    return weight


def _near(text: str, match: re.Match[str]) -> str:
    return "'" + _short(text[max(0, match.start() - 15): match.end() + 5].strip(), 30) + "'"


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
