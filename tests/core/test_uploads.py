"""Image prompts: uploads checked before decoding, normalised, kept with their job; --strength and --iw."""

from __future__ import annotations

import asyncio
import io
import os
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from bot.config import config_from_dict
from bot.core.errors import UserError
from bot.core.jobs import Origin
from bot.core.request import parse_prompt
from bot.core.resolve import resolve
from bot.core.upload_quota import UploadQuotaLimits
from bot.core.uploads import UNUSED_SECONDS, UploadLimits, UploadStore, aspect_of, read_image
from bot.models.variant import VariantDefaults
from bot.stack import open_stack
from tests.helpers.executor import FakeExecutor, fake_model_store

LIMITS = UploadLimits(max_bytes=1024 * 1024, max_pixels=1000 * 1000)
ALICE = Origin("web", "alice", chat_id="web")


def png_bytes(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **params)
    return out.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, followed by pixel data that is not valid: decoding
    it would fail, so a refusal about its size shows that nothing was decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib data") + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding():
    with pytest.raises(UserError) as caught:
        read_image(png_header_claiming(5_000, 5_000), LIMITS)
    assert caught.value.key == "upload_too_many_pixels"
    assert "5000x5000" in str(caught.value) and "1000000" in str(caught.value)
    # The same broken pixel data within the limit is decoded, and fails as a broken picture.
    with pytest.raises(UserError) as caught:
        read_image(png_header_claiming(100, 100), LIMITS)
    assert caught.value.key == "upload_not_image"


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = png_bytes(Image.new("L", (4000, 4000)), optimize=True)  # 16 megapixels of zeros, a few KiB
    assert len(bomb) < 64 * 1024
    with pytest.raises(UserError, match="4000x4000 pixels; the limit is 1000000"):
        read_image(bomb, LIMITS)


def test_bad_uploads_get_messages_that_say_what_is_allowed():
    with pytest.raises(UserError, match="is empty"):
        read_image(b"", LIMITS)
    with pytest.raises(UserError, match=r"is 1\.0 MiB; the limit is 1\.0 MiB") as caught:
        read_image(b"x" * (LIMITS.max_bytes + 1), LIMITS)
    assert caught.value.key == "upload_too_large"
    with pytest.raises(UserError, match="Send PNG, JPEG, WEBP"):
        read_image(b"%PDF-1.4 not a picture", LIMITS)


def test_exif_orientation_is_applied_and_metadata_stripped(tmp_path):
    # A photo taken with the camera on its side: stored 40x20, to be shown rotated (orientation 6).
    photo = Image.new("RGB", (40, 20), "red")
    photo.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to view
    exif[0x010F] = "SecretCam"  # camera make
    out = io.BytesIO()
    photo.save(out, format="JPEG", exif=exif.tobytes(), quality=95)

    store = UploadStore(tmp_path, LIMITS)
    handle = store.save(out.getvalue())
    saved = Image.open(store.find(handle))
    assert saved.format == "JPEG" and saved.size == (20, 40)  # upright, and a JPEG still
    top = saved.convert("RGB").getpixel((10, 5))
    assert top[2] > 200 and top[0] < 60, top  # the blue half is on top once turned upright
    assert not saved.getexif() and "exif" not in saved.info and b"SecretCam" not in store.find(handle).read_bytes()


def test_transparent_pixels_become_white_and_masks_grey(tmp_path):
    store = UploadStore(tmp_path, LIMITS)
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert Image.open(store.find(store.save(png_bytes(clear)))).convert("RGB").getpixel((0, 0)) == (255, 255, 255)
    mask = Image.open(store.find(store.save(png_bytes(Image.new("RGB", (8, 8), "white")), "mask")))
    assert mask.mode == "L"


def test_handles_are_checked_and_unused_uploads_expire(tmp_path):
    store = UploadStore(tmp_path, LIMITS)
    for bad in ("../../etc/passwd", "0" * 31, 42, None, "g" * 32):
        with pytest.raises(UserError, match="unknown or has expired"):
            store.find(bad)
    handle = store.save(png_bytes(Image.new("RGB", (8, 8))))
    kept = store.keep_for_job(store.find(handle))
    old = time.time() - UNUSED_SECONDS - 10
    os.utime(store.find(handle), (old, old))
    os.utime(kept, (old, old))
    assert store.sweep() == 1
    with pytest.raises(UserError):
        store.find(handle)
    assert kept.is_file()  # a job's own copy stays with the job


def noisy(size: int, seed: int = 0) -> Image.Image:
    """Pixels that no encoder can compress: the worst case for the size an upload is stored at."""
    return Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3))


def test_a_jpeg_stays_a_jpeg_far_smaller_than_its_png_and_masks_stay_png(tmp_path):
    out = io.BytesIO()
    noisy(512).save(out, format="JPEG", quality=90)
    store = UploadStore(tmp_path, UploadLimits(max_bytes=10 * 1024 * 1024, max_pixels=1000 * 1000))
    stored = store.find(store.save(out.getvalue()))
    as_png = len(png_bytes(Image.open(io.BytesIO(out.getvalue())).convert("RGB")))
    assert stored.suffix == ".jpg" and stored.stat().st_size < as_png / 2, (stored.stat().st_size, as_png)
    assert store.quota.total_size == stored.stat().st_size  # counted as stored
    mask = store.find(store.save(out.getvalue(), "mask"), "mask")
    assert mask.suffix == ".png" and Image.open(mask).mode == "L"  # exact edges


def test_uploads_are_shared_out_per_user_and_per_address_by_their_size_as_stored(tmp_path):
    quota = UploadQuotaLimits(per_user=2, per_user_bytes=10 ** 9, per_address=3, per_address_bytes=10 ** 9,
                              total=100, total_bytes=10 ** 9)
    store = UploadStore(tmp_path, UploadLimits(max_bytes=10 * 1024 * 1024, max_pixels=1000 * 1000), quota)
    data = png_bytes(Image.new("RGB", (8, 8)))
    one, another = ("web:one", "address:203.0.113.7"), ("web:another", "address:203.0.113.7")
    first = store.save(data, owners=one)
    store.save(data, owners=one)
    with pytest.raises(UserError) as refused:
        store.save(data, owners=one)
    assert refused.value.key == "user_uploads_full" and refused.value.params["limit"] == 2
    store.save(data, owners=another)  # a new key from the same address: the address's share is what is left
    with pytest.raises(UserError) as refused:
        store.save(data, owners=another)
    assert refused.value.key == "address_uploads_full" and refused.value.params["count"] == 3
    store.save(data, owners=("web:elsewhere", "address:198.51.100.2"))  # everyone else is served
    store.remove(store.find(first))  # gone: its share is free again
    store.save(data, owners=one)
    old = time.time() - UNUSED_SECONDS - 10
    for path in store.folder.iterdir():
        os.utime(path, (old, old))
    assert store.sweep() == 4 and store.quota.count == {} and store.quota.total_size == 0  # expired: all free

    by_size = UploadStore(tmp_path / "sized", LIMITS, UploadQuotaLimits(per_user_bytes=len(png_bytes(noisy(64))) * 2))
    by_size.save(png_bytes(noisy(64, 1)), owners=one)
    by_size.save(png_bytes(noisy(64, 2)), owners=one)
    with pytest.raises(UserError) as refused:
        by_size.save(png_bytes(noisy(64, 3)), owners=one)
    assert refused.value.key == "user_uploads_full"


def test_the_pool_remembers_uploads_kept_before_a_restart(tmp_path):
    store = UploadStore(tmp_path, LIMITS, UploadQuotaLimits(total=2))
    store.save(png_bytes(Image.new("RGB", (8, 8))))
    store.save(png_bytes(Image.new("RGB", (8, 8))))
    restarted = UploadStore(tmp_path, LIMITS, UploadQuotaLimits(total=2))
    with pytest.raises(UserError) as refused:
        restarted.save(png_bytes(Image.new("RGB", (8, 8))))
    assert refused.value.key == "uploads_full"


def test_aspect_follows_the_image():
    assert aspect_of((1600, 900)) == (16, 9)
    assert aspect_of((100, 100)) == (1, 1)
    assert aspect_of((10, 1000)) == (1, 4)  # clamped to what requests allow


# --- strength and --iw -----------------------------------------------------------------------------


def resolved(text: str, **defaults):
    options = parse_prompt(text)
    from dataclasses import replace
    options = replace(options, init_image="source.png")
    config = config_from_dict({})
    return resolve(options, {"demo": VariantDefaults(**defaults)}, "demo", config.limits)


def test_strength_and_its_midjourney_alias():
    assert resolved("a fox").strength == 0.6  # the variant's default
    assert resolved("a fox", strength=0.45).strength == 0.45
    assert resolved("a fox --strength 0.3").strength == 0.3
    assert resolved("a fox --iw 1").strength == 0.6
    assert resolved("a fox --iw 2").strength == 0.2  # the image counts most: it changes least
    assert resolved("a fox --iw 0").strength == 1.0
    with pytest.raises(UserError, match=r"--strength must be 0\.1-1 .*got 0\.05"):
        resolved("a fox --strength 0.05")
    with pytest.raises(UserError, match="--iw must be 0-2"):
        resolved("a fox --iw 3")
    with pytest.raises(UserError, match="either --strength or --iw"):
        resolved("a fox --iw 1 --strength 0.5")


# --- through the service ------------------------------------------------------------------------------


@pytest.fixture
async def service(tmp_path):
    config = config_from_dict({"storage": {"state_dir": str(tmp_path / "state"), "models_dir": str(tmp_path / "models")},
                               "limits": {"min_side": 32, "max_upload_pixels": 1000 * 1000}})
    fake_model_store(Path(config.storage.models_dir))
    executor = FakeExecutor()
    executor.gate.clear()  # jobs wait: these tests are about what is stored when they are queued
    stack = await open_stack(config, executor)
    yield stack.service
    executor.gate.set()
    await stack.close()


async def test_an_image_prompt_is_kept_with_its_job_in_its_shape(service):
    data = png_bytes(Image.new("RGB", (320, 180), "green"))
    submitted = await service.submit("a fox --seed 1", ALICE, image=data)
    request = submitted.request
    source = Path(request.init_image)
    assert source.parent == service.uploads.folder and source.name.startswith("job-") and source.is_file()
    assert request.strength == 0.6 and request.width > request.height  # landscape, as the image
    assert [p.name for p in service.uploads.folder.iterdir()] == [source.name]  # no handle left behind
    # A size the user gives wins over the image's shape.
    assert (await service.submit("a fox --ar 1:1", ALICE, image=data)).request.width == \
        (await service.submit("a fox --ar 1:1", ALICE, image=data)).request.height


async def test_a_refused_request_leaves_no_upload_behind(service):
    data = png_bytes(Image.new("RGB", (64, 64)))
    with pytest.raises(UserError, match="steps"):
        await service.submit("a fox --steps 999", ALICE, image=data)
    with pytest.raises(UserError, match="1000000"):
        await service.submit("a fox", ALICE, image=png_header_claiming(5000, 5000))
    handle = await service.upload(data, ALICE)
    with pytest.raises(UserError, match="strength"):
        await service.submit("a fox --strength 7", ALICE, image=handle, mask=handle)
    assert sorted(p.name for p in service.uploads.folder.iterdir()) == [f"{handle}.png"]
    with pytest.raises(UserError, match="needs the image"):
        await service.submit("a fox", ALICE, mask=handle)


async def test_an_upload_handle_serves_several_requests_with_a_mask(service):
    handle = await service.upload(png_bytes(Image.new("RGB", (64, 64))), ALICE)
    mask = await service.upload(png_bytes(Image.new("L", (64, 64), 255)), ALICE, "mask")
    first = await service.submit("a fox", ALICE, image=handle, mask=mask)
    second = await service.submit("a cat", ALICE, image=handle)
    assert first.request.mask_image and Path(first.request.mask_image).is_file()
    assert first.request.init_image != second.request.init_image and second.request.mask_image is None
    assert first.request.batch_key() != second.request.batch_key()  # inpainting runs on its own


async def test_a_cancelled_jobs_copy_of_its_upload_goes_with_it_and_a_reroll_has_its_own(service):
    data = png_bytes(Image.new("RGB", (64, 64), "green"))
    running = await service.submit("a fox", ALICE, image=data)  # held at the executor's gate
    while (await service.job(running.public_id)).status != "running":
        await asyncio.sleep(0.01)
    waiting = await service.submit("a cat", ALICE, image=data)
    rerolled = await service.submit_derived(waiting.public_id, "reroll", ALICE)
    sources = [Path(s.request.init_image) for s in (running, waiting, rerolled)]
    assert len(set(sources)) == 3 and all(path.is_file() for path in sources)
    assert await service.cancel(waiting.public_id, ALICE) == "cancelled"  # a waiting job: at once
    assert not sources[1].exists() and sources[2].is_file()  # the reroll keeps its own copy
    assert await service.cancel(running.public_id, ALICE) == "cancelling"
    service.executor.gate.set()
    finished = await service.wait_finished(running.public_id)
    assert finished.status == "cancelled" and not sources[0].exists()
    with pytest.raises(UserError, match="unknown or has expired"):  # its copy is gone: said, not a crash
        await service.submit_derived(waiting.public_id, "reroll", ALICE)

