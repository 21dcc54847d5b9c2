"""AUTOMATIC1111 prompt syntax: weights, escapes and LoRA tags, and the refusals of what cannot be read."""

import pytest

from bot.core.errors import UserError
from bot.core.prompt_syntax import has_weights, lora_tags, strip_lora_tags, weighted_fragments
from bot.core.request import GenerationRequest, options_from_fields, parse_prompt


def rounded(fragments):
    return [(text, round(weight, 4)) for text, weight in fragments]


@pytest.mark.parametrize("prompt, fragments", [
    ("a red circle", [("a red circle", 1.0)]),
    ("a (red:1.5) circle", [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]),
    ("(red)", [("red", 1.1)]),
    ("((red))", [("red", 1.21)]),
    ("[red]", [("red", 0.9091)]),
    ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 1.0), (" c", 0.5)]),
    ("(red : 1.3 )", [("red ", 1.3)]),
    (r"a \(literal\) bracket", [("a (literal) bracket", 1.0)]),
    ("style: anime", [("style: anime", 1.0)]),
    ("a <lora:demo-finetuned:0.8> cat", [("a cat", 1.0)]),
])
def test_fragments_and_weights(prompt, fragments):
    assert rounded(weighted_fragments(prompt)) == fragments


@pytest.mark.parametrize("prompt, problem", [
    ("(red", "'(' is never closed"),
    ("[red", "'[' is never closed"),
    ("red)", "')' without '('"),
    ("red]", "']' without '['"),
    ("(red:abc)", "'abc' in '(red:abc)' is not a number"),
    ("(red:1.2.3)", "'1.2.3'"),
    ("(red:)", "is not a number"),
    ("(red:11)", "outside 0-10"),
])
def test_weights_that_cannot_be_read_are_refused_with_what_is_allowed(prompt, problem):
    with pytest.raises(UserError) as refused:
        weighted_fragments(prompt)
    assert refused.value.key == "prompt_weights_bad"
    assert problem in str(refused.value) and "(word:1.3)" in str(refused.value)


def test_plain_prompts_have_no_weights():
    assert not has_weights("a red circle, 4k: sharp")
    assert has_weights("a (red) circle") and has_weights(r"a \(red\)")
    assert not has_weights("a <lora:x:1> cat")


def test_lora_tags():
    prompt = "a cat <lora:demo-finetuned:0.8>, <lora:speckles> <LORA:x:-1>"
    assert lora_tags(prompt) == [("demo-finetuned", 0.8), ("speckles", 1.0), ("x", -1.0)]
    assert strip_lora_tags(prompt) == "a cat ,"
    with pytest.raises(UserError, match="not a number from -10 to 10"):
        lora_tags("<lora:a:0.5:0.5>")


def test_the_lora_flag_repeats_and_takes_lists():
    options = parse_prompt("a cat --lora a:0.8, b --lora c:0.25")
    assert options.loras == (("a", 0.8), ("b", 1.0), ("c", 0.25))
    assert options_from_fields("x", loras=[["a", 0.5], "b:2"]).loras == (("a", 0.5), ("b", 2.0))
    with pytest.raises(UserError, match="not a number"):
        parse_prompt("a cat --lora a:much")
    with pytest.raises(UserError, match="not a model name"):
        parse_prompt("a cat --lora ../x:1")


def test_loras_survive_the_database_as_json():
    import json

    request = GenerationRequest(prompt="p", negative_prompt="", model="demo", seed=1, steps=2, guidance=1.0,
                                width=32, height=32, loras=(("a", 0.5), ("b", 1.0)))
    again = GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request and again.batch_key() == request.batch_key()
    assert GenerationRequest.from_dict({**request.to_dict(), "loras": []}).batch_key() != request.batch_key()
