"""Model stores for tests: variants made of tiny random-weight pipelines."""

from __future__ import annotations

import shutil
from pathlib import Path


def add_pipeline_variant(models_dir: Path, name: str, source: Path, toml: str = 'kind = "pipeline"\n') -> Path:
    """A copy of the pipeline folder `source` as variant `name`, with its variant.toml."""
    folder = models_dir / name
    shutil.copytree(source, folder)
    (folder / "variant.toml").write_text(toml, encoding="utf-8")
    return folder
