"""Model stores for tests: variants made of tiny random-weight pipelines."""

from __future__ import annotations

import shutil
from pathlib import Path

# variant.toml of a tiny diffusion-transformer variant (tests/helpers/tiny_dit.py): its own size, two steps.
SMALL_DIT_TOML = "[defaults]\nwidth = 64\nheight = 64\nsteps = 2\n"


def add_pipeline_variant(models_dir: Path, name: str, source: Path, toml: str = 'kind = "pipeline"\n') -> Path:
    """A copy of the pipeline folder `source` as variant `name`, with its variant.toml."""
    folder = models_dir / name
    shutil.copytree(source, folder)
    (folder / "variant.toml").write_text(toml, encoding="utf-8")
    return folder


def add_single_file_variant(models_dir: Path, name: str, source: Path, toml: str = "") -> Path:
    """Variant `name`: the pipeline folder `source` exported as one original-layout checkpoint, with
    `arch = "auto"` and the tiny architecture's configs next to it (`config = "arch"`; a real
    checkpoint uses the shipped ones). Weights and tokenizers do not travel: only the file does."""
    from training.to_single_file import export_single_file

    folder = models_dir / name
    folder.mkdir(parents=True)
    export_single_file(source, folder / "model.safetensors")
    for path in source.rglob("*.json"):
        relative = path.relative_to(source)
        if relative.parts[0].startswith("tokenizer"):
            continue
        (folder / "arch" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / "arch" / relative)
    (folder / "variant.toml").write_text(f'file = "model.safetensors"\narch = "auto"\nconfig = "arch"\n{toml}',
                                         encoding="utf-8")
    return folder
