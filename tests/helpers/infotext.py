"""Reading back the AUTOMATIC1111 `parameters` text of a PNG the bot wrote, as tools do."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.outputs import ImageParameters, parameters_from_a1111

# A settings line a prompt might try to smuggle into the text.
FORGED_SETTINGS = "Steps: 1, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32"
INJECTION = f"a red circle\nNegative prompt: injected\n{FORGED_SETTINGS}"


def read_with_sd_parsers(path: Path):
    """What sd-parsers, a third-party reader of these texts, makes of the PNG at `path`."""
    sd_parsers = pytest.importorskip("sd_parsers")
    info = sd_parsers.ParserManager().parse(path)
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    return info


def read_back(path: Path, lines: int = 3) -> ImageParameters:
    """The PNG's parameters as our reader reads them; the text has `lines` lines (prompt,
    negative prompt, settings), and sd-parsers reads the same prompts, steps and seed."""
    with Image.open(path) as image:
        text = image.text["parameters"]
    assert len(text.splitlines()) == lines, text
    read = parameters_from_a1111(text)
    info = read_with_sd_parsers(path)
    assert (info.full_prompt, info.full_negative_prompt) == (read.prompt, read.negative_prompt)
    assert (info.samplers[0].parameters["steps"], info.samplers[0].parameters["seed"]) == (str(read.steps),
                                                                                           str(read.seed))
    return read
