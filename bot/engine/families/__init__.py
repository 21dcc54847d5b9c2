"""The model families the bot can run, one module each; this package lists them.

Importable without torch: the model store asks it which family a variant is (from its pipeline
class or its checkpoint's architecture) and hands the family's traits to the core. Adding a family
is one new module here, listed in `_MODULES`, plus its tests (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from bot.engine.families import flux1, flux2, qwenimage, sd1, sd2, sd3, sdxl, zimage
from bot.engine.families.base import Family
from bot.engine.families.common import read_index

_MODULES = (sd1, sd2, sdxl, sd3, flux1, flux2, zimage, qwenimage)
ALL: tuple[Family, ...] = tuple(family for module in _MODULES for family in module.FAMILIES)
_BY_NAME = {family.name: family for family in ALL}
DEFAULT = sd1.FAMILY  # what an unknown hub model is taken for

assert len(_BY_NAME) == len(ALL), "two families share a name"


def by_name(name: str) -> Family:
    """The family called `name`; KeyError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(_BY_NAME)}") from None


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def for_arch(arch: str) -> Family | None:
    """The family of a checkpoint architecture (variant.toml's `arch`, or what detection found)."""
    return next((family for family in ALL if arch in family.arches), None)


def for_pipeline_folder(folder: Path) -> Family | None:
    """The family of a diffusers pipeline folder, from model_index.json's class and, where families
    share a class, their configs."""
    class_name = read_index(folder).get("_class_name")
    if class_name is None:
        return None
    candidates = [family for family in ALL if class_name in family.pipelines.values()]
    if len(candidates) > 1:
        candidates = [family for family in candidates if family.claims is None or family.claims(folder)]
    return candidates[0] if candidates else None


def for_repo(repo: str) -> Family | None:
    """The family a hub repository's name says (its longest matching word wins: "flux.1-dev" over
    a shorter word of another family); None when it says none."""
    name = repo.lower()
    matches = [(len(word), family) for family in ALL for word in family.repo_words if word in name]
    return max(matches, key=lambda match: match[0])[1] if matches else None
