"""The local executor (bot/executors/local.py) under the service, with the real store and registry,
on a tiny model: the GPU worker thread runs torch."""

import asyncio

import pytest

from bot.config import config_from_dict
from bot.core.errors import UserError
from bot.core.jobs import Origin
from bot.core.service import Service
from bot.core.store import Store
from bot.executors.local import LocalExecutor
from bot.models.registry import Registry
from tests.helpers.models import add_pipeline_variant

ALICE = Origin("telegram", "alice", chat_id="group1")
BOB = Origin("telegram", "bob", chat_id="group1")
ADMIN = Origin("telegram", "root", chat_id="group1", is_admin=True)


@pytest.fixture
async def make_service(tmp_path, models_dir):
    services = []

    async def make(**sections):
        state = tmp_path / ("state" if not services else f"state{len(services)}")  # each its own queue
        settings = {"storage": {"state_dir": str(state), "models_dir": str(models_dir)},
                    "limits": {"min_side": 32}, "models": {"rescan_seconds": 0.0}}
        for name, values in sections.items():
            settings.setdefault(name, {}).update(values)
        config = config_from_dict(settings)
        store = await Store.open(config.storage.database_path())
        registry = Registry(models_dir, config.variants, 0.0)
        executor = LocalExecutor(registry, config.engine, config.storage.outputs_path())
        service = Service(config, store, executor, registry)
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.stop()
        await service.store.close()


async def wait_finished(service, job_id, timeout=60.0):
    async def poll():
        while not (job := await service.job(job_id)).finished:
            await asyncio.sleep(0.05)
        return job
    return await asyncio.wait_for(poll(), timeout)


async def test_events_arrive_in_order_and_the_job_is_done(make_service):
    service = await make_service()
    events = []
    subscription = service.subscribe(platform="telegram")

    async def listen():
        async for event in subscription:
            events.append(event)
            if event["type"] in ("done", "failed"):
                subscription.close()
                return

    listener = asyncio.create_task(listen())
    submitted = await service.submit("a cat --seed 4 --steps 3", ALICE)
    await asyncio.wait_for(listener, 60)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done"
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3]
    job = await service.job(submitted.job_id)
    assert job.status == "done" and [i.file for i in job.images] == [f"{job.public_id}-0.png"]
    assert (service.config.storage.outputs_path() / job.images[0].file).is_file()


async def test_a_timed_out_batch_fails_with_a_reason_and_the_worker_goes_on(make_service):
    service = await make_service(queue={"job_timeout": 0.3}, limits={"max_steps": 500})
    slow = await service.submit("a cat --steps 400", ALICE)
    quick = await service.submit("a dog --steps 2 --size 32x32", BOB)
    slow_job = await wait_finished(service, slow.job_id)
    assert slow_job.status == "failed" and slow_job.error_key == "timed_out"
    assert "0 s" in slow_job.error or "timed out" in slow_job.error
    assert (await wait_finished(service, quick.job_id)).finished  # the queue moved on


async def test_a_broken_model_fails_its_job_only(make_service, models_dir, tiny_pipeline_dir):
    broken = add_pipeline_variant(models_dir, "broken", tiny_pipeline_dir)
    next(broken.glob("unet/*.safetensors")).write_bytes(b"junk")
    service = await make_service()
    bad = await service.submit("a cat --model broken", ALICE)
    good = await service.submit("a cat --steps 2", BOB)
    bad_job = await wait_finished(service, bad.job_id)
    assert bad_job.status == "failed" and "broken" in bad_job.error
    assert (await wait_finished(service, good.job_id)).status == "done"


async def test_cancel_a_running_job_then_the_next_one_runs(make_service):
    service = await make_service(limits={"max_steps": 500})
    running = await service.submit("a cat --steps 200", ALICE)
    after = await service.submit("a dog --steps 2", BOB)
    while (await service.status(running.job_id)).step is None:
        await asyncio.sleep(0.02)
    with pytest.raises(UserError, match="someone else"):
        await service.cancel(running.job_id, BOB)
    assert await service.cancel(running.job_id, ALICE) == "cancelling"
    assert (await wait_finished(service, running.job_id)).status == "cancelled"
    assert (await wait_finished(service, after.job_id)).status == "done"


async def test_admin_and_chat_defaults(make_service, models_dir, tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "finetuned", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 2\n')
    service = await make_service()
    with pytest.raises(UserError, match="Only admins"):
        await service.set_default_variant("chat", "finetuned", ALICE)
    with pytest.raises(UserError, match="no model 'nothere'"):
        await service.set_default_variant("chat", "nothere", ADMIN)
    await service.set_default_variant("chat", "finetuned", ADMIN)
    assert (await service.submit("a cat", ALICE)).request.model == "finetuned"
    assert (await service.submit("a cat", Origin("web", "x", chat_id="web"))).request.model == "demo"
    with pytest.raises(UserError, match="this chat's admins"):
        await service.set_chat_flags("--ar 2:1 --steps 2 --no blurry", ALICE)
    alice_runs_the_chat = Origin("telegram", "alice", chat_id="group1", manages_chat=True)
    await service.set_chat_flags("--ar 2:1 --steps 2 --no blurry", alice_runs_the_chat)
    request = (await service.submit("a cat --steps 3", ALICE)).request
    assert (request.steps, request.negative_prompt, request.width > request.height) == (3, "blurry", True)
    with pytest.raises(UserError, match="Unknown option"):
        await service.set_chat_flags("--bogus 1", alice_runs_the_chat)
    assert (await service.store.audit_log())[0]["action"] == "set_default_model"


async def test_bans_quotas_and_admin_exemption(make_service):
    service = await make_service(queue={"max_queued_per_user": 1, "max_jobs_per_hour": 100})
    await service.submit("a cat --steps 50", ALICE)
    with pytest.raises(UserError, match="limit is 1"):
        await service.submit("a cat", ALICE)
    await service.submit("a cat", ADMIN)
    await service.submit("a cat", ADMIN)  # admins are exempt
    await service.ban(BOB.user_key, "spam", ADMIN)
    with pytest.raises(UserError, match="spam"):
        await service.submit("a cat", BOB)


async def test_shutdown_requeues_an_unfinished_batch(make_service):
    service = await make_service(queue={"shutdown_grace": 0.2}, limits={"max_steps": 500})
    job = await service.submit("a cat --steps 300", ALICE)
    while (await service.status(job.job_id)).step is None:
        await asyncio.sleep(0.02)
    await service.stop()
    assert (await service.store.get(job.job_id)).status == "queued"
    with pytest.raises(UserError, match="restarting"):
        await service.submit("a dog", BOB)


async def test_reroll_variation_and_upscale_derive_new_jobs(make_service):
    service = await make_service()
    first = await service.submit("a cat --seed 4 --steps 2 --n 2 --size 32x32", ALICE)
    with pytest.raises(UserError, match="no finished image"):
        await service.submit_derived(first.job_id, "variation", BOB, index=0)
    source = await wait_finished(service, first.job_id)
    reroll = await service.submit_derived(first.job_id, "reroll", BOB)
    variation = await service.submit_derived(first.job_id, "variation", BOB, index=1)
    upscale = await service.submit_derived(first.job_id, "upscale", BOB, index=0)
    assert reroll.request.seed != 4 and reroll.request.count == 2 and reroll.request.init_image is None
    assert variation.request.init_image.endswith(source.images[1].file) and variation.request.strength == service.config.variations.strong
    assert (upscale.request.width, upscale.request.height, upscale.request.count) == (64, 64, 1)
    for submitted in (reroll, variation, upscale):
        job = await wait_finished(service, submitted.job_id)
        assert job.status == "done", job.error
        assert job.origin.user_key == BOB.user_key
    with pytest.raises(UserError, match="no finished image 3"):
        await service.submit_derived(first.job_id, "upscale", BOB, index=2)


async def test_a_reroll_keeps_the_refiner_setting_of_its_source(make_service, models_dir, tiny_sdxl_dir,
                                                                 tiny_sdxl_refiner_dir):
    add_pipeline_variant(models_dir, "xl", tiny_sdxl_dir, 'kind = "pipeline"\nrefiner = "refiner"\n'
                                                           '[defaults]\nsteps = 2\n')
    add_pipeline_variant(models_dir, "refiner", tiny_sdxl_refiner_dir)
    service = await make_service()
    settings = {}
    for flags in ("", " --refiner 0.5", " --refiner 0"):
        first = await service.submit(f"a cat --model xl{flags}", ALICE)
        assert (await wait_finished(service, first.job_id)).status == "done"
        reroll = await service.submit_derived(first.job_id, "reroll", BOB)
        settings[flags] = (reroll.request.refiner, reroll.request.refiner_switch)
        assert (await wait_finished(service, reroll.job_id)).status == "done"
    assert settings == {"": ("refiner", 0.8), " --refiner 0.5": ("refiner", 0.5), " --refiner 0": (None, None)}


async def test_a_hung_generation_is_abandoned_and_a_fresh_worker_takes_over(make_service, monkeypatch):
    """A generation stuck inside a library call (no step callbacks at all) cannot be interrupted;
    the executor gives up on its thread after the timeout and starts a new one."""
    import threading

    from bot.executors import local as executor_module

    monkeypatch.setattr(executor_module, "GRACE_SECONDS", 0.2)
    release = threading.Event()
    real_run_batch = LocalExecutor._run_batch
    calls = []

    def stuck_once(self, items, *args):
        calls.append([item.job_id for item in items])
        if len(calls) == 1:
            release.wait(30)  # simulated hang in a kernel
        return real_run_batch(self, items, *args)

    monkeypatch.setattr(LocalExecutor, "_run_batch", stuck_once)
    service = await make_service(queue={"job_timeout": 12.0})  # room to load the model again on a busy CPU
    hung = await service.submit("a cat --steps 2", ALICE)
    after = await service.submit("a dog --steps 2 --size 32x32", BOB)
    try:
        hung_job = await wait_finished(service, hung.job_id)
        assert hung_job.status == "failed" and hung_job.error_key == "timed_out"
        assert (await wait_finished(service, after.job_id)).status == "done"
        assert service.executor.metrics()["hung_generations"] == 1
    finally:
        release.set()


async def test_two_devices_run_two_batches_at_once_with_the_same_images_as_one(make_service):
    """`[engine] devices` on the CPU (two lanes, as two GPUs would be): capacity two, both busy at
    once, and each image the same as on a single device."""
    prompts = [f"shape {n} --seed {n} --steps 3" for n in range(4)]
    one = await make_service(engine={"threads": 1})
    two = await make_service(engine={"threads": 1, "devices": ["cpu", "cpu"]}, queue={"batch_window": 0.0})
    assert one.executor.capacity == 1 and two.executor.capacity == 2
    seen_in_flight = []
    events = two.subscribe()
    submitted = {service: [await service.submit(p, ALICE if n % 2 else BOB) for n, p in enumerate(prompts)]
                 for service in (one, two)}
    async def watch():
        async for event in events:
            seen_in_flight.append(len(two.worker.in_flight))
    watcher = asyncio.create_task(watch())
    jobs = {service: [await wait_finished(service, s.job_id) for s in subs] for service, subs in submitted.items()}
    watcher.cancel()
    assert max(seen_in_flight) == 2
    assert two.executor.metrics()["devices"] == 2
    from bot.frontends.web.metrics import prometheus_text

    assert "imagebot_executor_capacity 2" in prometheus_text(await two.metrics())
    [demo] = [m for m in await two.list_variants(ADMIN) if m["name"] == "demo"]
    assert demo["where"] == ["cpu", "cpu"]  # each device loaded it for its own batches
    for single, double in zip(jobs[one], jobs[two]):
        assert single.status == double.status == "done"
        a = (one.config.storage.outputs_path() / single.images[0].file).read_bytes()
        b = (two.config.storage.outputs_path() / double.images[0].file).read_bytes()
        assert a == b
