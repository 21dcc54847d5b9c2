"""Subtle and strong variations of a shipped demo model's image, through the service as every frontend
uses it: the strong one moves further from its source than the subtle one."""

from pathlib import Path

import numpy as np

from bot.core.jobs import Origin
from tests.helpers.service import start_service, stop_service

MODELS = Path(__file__).resolve().parents[2] / "models"
ALICE = Origin("web", "alice")


async def finished(service, submitted):
    import asyncio

    for _ in range(1200):
        job = await service.job(submitted.job_id)
        if job.status in ("done", "failed"):
            assert job.status == "done", job.error
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("the job did not finish")


def pixels(config, job, index: int = 0) -> np.ndarray:
    from PIL import Image

    with Image.open(config.storage.outputs_path() / job.images[index].file) as image:
        return np.asarray(image.convert("RGB")).astype(np.float64)


async def test_subtle_and_strong_variations_differ_from_their_source_by_increasing_amounts(tmp_path):
    config, store, _, service = await start_service(tmp_path / "state", MODELS)
    try:
        assert (config.variations.subtle, config.variations.strong) == (0.35, 0.7)
        source = await finished(service, await service.submit("a yellow triangle on a purple background --n 4 --seed 2",
                                                               ALICE))
        moved = {}
        image = str(config.storage.outputs_path() / source.images[0].file)
        for action in ("vary_subtle", "vary_strong"):
            derived = await service.submit_derived(source.public_id, action, ALICE)
            assert derived.request.init_image == image and derived.request.count == 4
            # The same variation with fixed seeds, so the comparison does not hang on a random seed's luck;
            # four images each, from seeds of their own.
            job = await finished(service, await service.submit(
                f"{source.request.prompt} --n 4 --seed 11", ALICE, init_image=image, strength=derived.request.strength))
            moved[action] = float(np.mean([np.abs(pixels(config, job, i) - pixels(config, source)).mean()
                                           for i in range(4)]))
        assert 0 < moved["vary_subtle"] < moved["vary_strong"]
    finally:
        await stop_service(service, store)
