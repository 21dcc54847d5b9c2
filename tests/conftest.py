"""Shared test set-up: never reach a model hub; tiny random-weight models built on the spot.
What tests import lives in tests/helpers/."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# As `imagebot` itself does: idle torch threads sleep instead of spinning (this machine is shared).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("IMAGEBOT_CONFIG", None)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from bot.logs import keep_secrets_out  # noqa: E402
from tests.helpers.models import add_pipeline_variant  # noqa: E402

keep_secrets_out()  # as `imagebot` does: the chat frontends run in-process here, with their tokens


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline folder (random weights, seed 0), built once per run."""
    from tests.helpers.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline")


@pytest.fixture
def models_dir(tmp_path, tiny_pipeline_dir) -> Path:
    """A model store holding one tiny pipeline variant called 'demo'."""
    models = tmp_path / "models"
    models.mkdir()
    add_pipeline_variant(models, "demo", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 3\n')
    return models


# The other model families, each a tiny random-weight pipeline folder built once per run when a test
# asks for it: SD 2.x-v, SDXL base, SDXL refiner, SD 1.x inpainting.


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory) -> Path:
    from tests.helpers.tiny import save_pipeline, tiny_sd2_pipeline

    return save_pipeline(tiny_sd2_pipeline(), tmp_path_factory.mktemp("tiny") / "sd2-v")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from tests.helpers.tiny import save_pipeline, tiny_sdxl_pipeline

    return save_pipeline(tiny_sdxl_pipeline(), tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_dir(tmp_path_factory) -> Path:
    from tests.helpers.tiny import save_pipeline, tiny_sdxl_refiner_pipeline

    return save_pipeline(tiny_sdxl_refiner_pipeline(seed=1), tmp_path_factory.mktemp("tiny") / "sdxl-refiner")


@pytest.fixture(scope="session")
def tiny_inpaint_dir(tmp_path_factory) -> Path:
    from tests.helpers.tiny import save_pipeline, tiny_sd15_inpaint_pipeline

    return save_pipeline(tiny_sd15_inpaint_pipeline(), tmp_path_factory.mktemp("tiny") / "inpaint")


@pytest.fixture(scope="session")
def tiny_dit_dir(tmp_path_factory):
    """tiny_dit_dir(family) -> that diffusion-transformer family's tiny pipeline folder ("flux1-dev",
    "qwenimage", ... as tests/helpers/tiny_dit.py names them), each built once per run when first asked for."""
    built: dict[str, Path] = {}

    def folder(family: str) -> Path:
        if family not in built:
            from tests.helpers.tiny_dit import save_tiny_dit

            built[family] = save_tiny_dit(family, tmp_path_factory.mktemp("tiny-dit") / family)
        return built[family]

    return folder
