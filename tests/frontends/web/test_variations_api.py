"""The HTTP API's LoRAs, prompt weights, subtle and strong variations and Remix, through the real app."""

from __future__ import annotations

from tests.helpers.api import ALICE, assert_error
from tests.helpers.tiny import save_tiny_lora


async def test_variations_and_remix_of_an_image(api):
    source = await api.submit("a fox --steps 2 --seed 3 --no fog")
    await api.wait(source["id"])
    made = {}
    for action, body in (("vary_subtle", {"index": 0}), ("vary_strong", {"index": 0}),
                         ("remix", {"index": 0, "prompt": "a blue fox --steps 3"})):
        response = await api.client.post(f"/api/jobs/{source['id']}/{action}", json=body, headers=ALICE)
        assert response.status_code == 202, response.text
        made[action] = response.json()["request"]
    assert made["vary_subtle"]["strength"] == 0.35 and made["vary_strong"]["strength"] == 0.7
    assert (made["remix"]["prompt"], made["remix"]["steps"], made["remix"]["strength"]) == ("a blue fox", 3, 0.7)
    assert made["remix"]["negative_prompt"] == "fog" and made["remix"]["init_image"] == f"{source['id']}-0.png"
    assert_error(await api.client.post(f"/api/jobs/{source['id']}/remix", json={"index": 0, "prompt": " "},
                                       headers=ALICE), 400, "Remix needs the new prompt")
    assert_error(await api.client.post(f"/api/jobs/{source['id']}/sideways", json={}, headers=ALICE), 404,
                 "vary_subtle, vary_strong, remix")


async def test_loras_by_field_or_tag_and_refusals(make_api, models_dir, tiny_pipeline_dir):
    save_tiny_lora(tiny_pipeline_dir, models_dir / "style")
    (models_dir / "style" / "variant.toml").write_text('kind = "lora"\nbase = "demo"\n')
    api = await make_api()
    by_field = await api.submit({"prompt": "a fox --steps 1", "loras": "style:0.5"})
    assert by_field["request"]["loras"] == [["style", 0.5]]
    by_tag = await api.submit("a fox <lora:style:0.7> --steps 1")
    assert by_tag["request"]["loras"] == [["style", 0.7]]
    assert (await api.wait(by_tag["id"]))["status"] == "done"
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a fox <lora:nothere:1>"}, headers=ALICE),
                 400, "There is no LoRA 'nothere'. LoRAs for demo: style.")
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a (fox:abc)"}, headers=ALICE),
                 400, "weights cannot be read", "(word:1.3)")
