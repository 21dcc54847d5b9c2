"""Making typed text safe to keep: one line, no control characters, no forged A1111 labels.

A prompt ends up in chat messages and in the PNG's AUTOMATIC1111 `parameters` text, whose lines
say what they are; these checks keep a prompt from breaking either (bot/outputs.py reads them
back with the same rules).
"""

from __future__ import annotations

import re

from bot.core.errors import UserError

# Control characters would end up in PNG text chunks and chat messages; keep tabs. A tab splits
# no line (it cannot forge one of the image's `parameters` lines) and the CLIP tokenizer reads it
# as a space, so it is left as typed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Line breaks: everything str.splitlines splits on ("\r\n" counts once). A prompt is written into
# the PNG's AUTOMATIC1111 `parameters` text, whose lines say what they are: a line break in the
# prompt would let it forge a "Negative prompt:" line or the settings line, and that text escapes
# nothing. The CLIP tokenizer reads every whitespace run as one space, so a line break drawn as a
# space draws the same picture.
_LINE_BREAK = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# AUTOMATIC1111's label of the negative prompt's line. Its readers take the text after it for the
# negative prompt: A1111 on a line that starts with it, others (sd-parsers) anywhere in the text.
NEGATIVE_LABEL = "Negative prompt:"


def one_line(text: str) -> str:
    """`text` with each line break as a space."""
    return _LINE_BREAK.sub(" ", text)


def clean_text(text: str) -> str:
    """What the user typed, on one line, without control characters or surrounding whitespace."""
    return _CONTROL.sub(" ", one_line(text)).strip()


def check_negative_label(prompt: str, negative_prompt: str | None) -> None:
    """Refuse AUTOMATIC1111's "Negative prompt:" label in a prompt: in the image's `parameters`
    text, whatever follows it would be read back as the negative prompt."""
    if NEGATIVE_LABEL in prompt:
        raise UserError("prompt_negative_label", label=NEGATIVE_LABEL)
    if negative_prompt is not None and NEGATIVE_LABEL in negative_prompt:
        raise UserError("negative_prompt_label", label=NEGATIVE_LABEL)

