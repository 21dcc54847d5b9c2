"""Fine-tuning takes the families its training loop knows; another is refused before anything loads."""

import json

import pytest

from training.finetune import FinetuneConfig, FinetuneError
from training.finetune_inputs import resolve_base


def test_a_flux_base_is_refused_by_its_family_before_loading(tmp_path):
    folder = tmp_path / "models" / "flux"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}), encoding="utf-8")
    (folder / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": True}), encoding="utf-8")
    (folder / "variant.toml").write_text("", encoding="utf-8")  # no weights at all: nothing may load
    with pytest.raises(FinetuneError, match="'flux' is a FLUX.1 \\[dev\\] model; only Stable Diffusion 1.x and 2.x"):
        resolve_base(FinetuneConfig(base="flux", models_dir=str(tmp_path / "models")))
