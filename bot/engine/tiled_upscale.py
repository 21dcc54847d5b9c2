"""The Upscale button: a finished image enlarged by an upscaler network (or resized), then, at
`strength` > 0, redrawn by image-to-image in tiles of the model's native size.

All tiles of a batch share pipeline calls, so memory stays that of one native-size batch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from PIL import Image

from bot.core.errors import Cancelled, UserError
from bot.engine.generation import Call, Item, Progress, ProgressCallback
from bot.engine.upscale import Upscaler, UpscalerError, blend_tiles, load_upscaler, run_upscaler, tile_boxes
from bot.models.spec import VariantSpec

if TYPE_CHECKING:
    from bot.engine.engine import Engine


class TiledUpscaler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._upscaler: Upscaler | None = None  # the last upscaler used (one is configured at a time)

    def run(self, requests, spec: VariantSpec, call: Call, on_progress, should_cancel) -> list[list[Image.Image]]:
        """Each request's `init_image` enlarged to its size, one image per request."""
        engine = self.engine
        first = requests[0]
        upscaler = self._upscaler_for(first.upscaler) if first.upscaler else None
        started = time.perf_counter()
        enlarged = []
        for request in requests:
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            size = (request.width, request.height)
            with Image.open(request.init_image) as source:
                image = source.convert("RGB")
            enlarged.append(run_upscaler(upscaler, image, size) if upscaler
                            else image.resize(size, Image.Resampling.LANCZOS))

        if first.strength:
            tile_w, tile_h = spec.defaults.width, spec.defaults.height
            overlap = min(tile_w, tile_h) // 4
            layouts = [tile_boxes(request.width, request.height, tile_w, tile_h, overlap) for request in requests]
            items = [
                # Each tile its own seed, so no noise pattern repeats across the image.
                Item(index, request.prompt, request.negative_prompt, (request.seed + n) % 2**32,
                     enlarged[index].crop((left, top, right, bottom)))
                for index, (request, boxes) in enumerate(zip(requests, layouts))
                for n, (top, left, bottom, right) in enumerate(boxes)
            ]
            engine.configure_vae(call.pipe, tile_w * tile_h)
            max_batch = engine.config.max_batch
            chunks = [items[at: at + max_batch] for at in range(0, len(items), max_batch)]
            drawn: list[Image.Image] = []
            for number, chunk in enumerate(chunks):
                report = _chunk_progress(on_progress, number, len(chunks))
                drawn += engine.runner.run_with_oom_retry(call, chunk, report, should_cancel)
            for index, boxes in enumerate(layouts):
                mine = [image for item, image in zip(items, drawn) if item.request_index == index]
                enlarged[index] = blend_tiles(mine, boxes, (requests[index].width, requests[index].height), overlap)
        engine.record_speed(spec.name, first, time.perf_counter() - started, len(requests))
        return [[image] for image in enlarged]

    def _upscaler_for(self, name: str) -> Upscaler:
        engine = self.engine
        try:
            spec = engine.residency.spec(name)
        except UserError as error:
            raise UserError("upscaler_missing", name=name, error=str(error)) from None
        if spec.kind != "upscaler":
            raise UserError("upscaler_missing", name=name,
                            error=f"it is a {spec.kind} variant; [upscale] model names a variant of kind \"upscaler\"")
        if self._upscaler is None or (self._upscaler.name, self._upscaler.fingerprint) != (name, spec.fingerprint):
            self._upscaler = None
            started = time.perf_counter()
            try:
                self._upscaler = load_upscaler(spec, engine.device, engine.dtype)
            except UpscalerError as error:
                raise UserError("upscaler_missing", name=name, error=str(error)) from error
            engine.count_load(time.perf_counter() - started)
        return self._upscaler


def _chunk_progress(on_progress: ProgressCallback | None, number: int, count: int) -> ProgressCallback | None:
    """Progress of one of `count` pipeline calls, reported as progress of the whole job."""
    if on_progress is None:
        return None
    return lambda p: on_progress(Progress(number * p.total + p.step, count * p.total, p.latents, p.family))
