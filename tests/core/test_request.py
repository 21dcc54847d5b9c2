"""Generation requests: inline flags, keyword options, defaults and limits (bot/core/request.py, bot/core/resolve.py)."""

from __future__ import annotations

import pytest

from bot.config import Limits
from bot.core.errors import UserError
from bot.core.request import (
    FLAGS,
    MAX_SEED,
    GenerationRequest,
    RequestOptions,
    merge_options,
    options_from_fields,
    parse_prompt,
)
from bot.core.family_rules import snap
from bot.core.resolve import resolve, size_for_aspect
from bot.models.variant import VariantDefaults
from tests.helpers.infotext import FORGED_SETTINGS, INJECTION, read_back

LIMITS = Limits()  # max_prompt_chars=1000, max_steps=50, max_guidance=30, sides 32-1024, 1 Mpx, 4 images
SD15 = VariantDefaults()  # 512x512, 25 steps, guidance 7, dpm++
SD21 = VariantDefaults(width=768, height=768, steps=30, guidance=9.0, scheduler="euler",
                       negative_prompt="lowres")
TINY = VariantDefaults(width=64, height=64, steps=3)
VARIANTS = {"demo": SD15, "sd21": SD21, "finetuned": VariantDefaults(steps=40, guidance=5.5)}


def make(text: str, variants=VARIANTS, default: str = "demo", limits: Limits = LIMITS, **kw) -> GenerationRequest:
    """Chat text -> a resolved request, the way the frontends do it."""
    return resolve(parse_prompt(text), variants, default, limits, **kw)


def user_error(fn, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    return info.value


# --- inline flags: what is accepted --------------------------------------------------------

# (typed text, expected RequestOptions fields other than None)
ACCEPTED = [
    ("a fox --ar 16:9", {"prompt": "a fox", "aspect": (16, 9)}),
    ("a fox --aspect 2:3", {"prompt": "a fox", "aspect": (2, 3)}),
    ("a fox --seed 42", {"prompt": "a fox", "seed": 42}),
    ("a fox --seed 0", {"prompt": "a fox", "seed": 0}),
    ("a fox --no blurry, text", {"prompt": "a fox", "negative_prompt": "blurry, text"}),
    ("a fox --neg blurry, low quality, watermark",
     {"prompt": "a fox", "negative_prompt": "blurry, low quality, watermark"}),
    ("a fox --steps 30", {"prompt": "a fox", "steps": 30}),
    ("a fox --cfg 7", {"prompt": "a fox", "guidance": 7.0}),
    ("a fox --cfg 7.5", {"prompt": "a fox", "guidance": 7.5}),
    ("a fox --guidance 12", {"prompt": "a fox", "guidance": 12.0}),
    ("a fox --n 4", {"prompt": "a fox", "count": 4}),
    ("a fox --count 2", {"prompt": "a fox", "count": 2}),
    ("a fox --model finetuned", {"prompt": "a fox", "model": "finetuned"}),
    ("a fox --model sd-2.1_base", {"prompt": "a fox", "model": "sd-2.1_base"}),
    ("a fox --size 768x512", {"prompt": "a fox", "width": 768, "height": 512}),
    ("a fox --size 768X512", {"prompt": "a fox", "width": 768, "height": 512}),
    ("a fox --size 768×512", {"prompt": "a fox", "width": 768, "height": 512}),
    ("a fox --scheduler euler_a", {"prompt": "a fox", "scheduler": "euler_a"}),
    ("a fox --sampler DDIM", {"prompt": "a fox", "scheduler": "ddim"}),
    # any order, several at once
    ("a fox --seed 7 --ar 3:2 --steps 20 --no snow",
     {"prompt": "a fox", "seed": 7, "aspect": (3, 2), "steps": 20, "negative_prompt": "snow"}),
    ("a fox --no snow, rain --cfg 4 --n 2 --model finetuned --seed 9",
     {"prompt": "a fox", "negative_prompt": "snow, rain", "guidance": 4.0, "count": 2,
      "model": "finetuned", "seed": 9}),
    # flag names are case-insensitive
    ("a fox --AR 16:9 --Seed 5 --STEPS 10", {"prompt": "a fox", "aspect": (16, 9), "seed": 5, "steps": 10}),
    # phones autocorrect "--" into an em dash or an en dash
    ("a fox \u2014ar 16:9", {"prompt": "a fox", "aspect": (16, 9)}),
    ("a fox \u2013seed 1", {"prompt": "a fox", "seed": 1}),
    ("a fox \u2014no blurry \u2013seed 3", {"prompt": "a fox", "negative_prompt": "blurry", "seed": 3}),
    # " -- " and "--" inside words are prompt text, not flags
    ("a fox -- in the snow", {"prompt": "a fox -- in the snow"}),
    ("in the style of http://example.com/a--b?x=--y --seed 2",
     {"prompt": "in the style of http://example.com/a--b?x=--y", "seed": 2}),
    ("well--known fox, wide-angle -- 35mm", {"prompt": "well--known fox, wide-angle -- 35mm"}),
    ("a fox — in the snow", {"prompt": "a fox — in the snow"}),
    # everything after the last flag belongs to it
    ("a fox --no blurry, text in the corner", {"prompt": "a fox", "negative_prompt": "blurry, text in the corner"}),
    # flags on their own lines
    ("a fox\n--seed 11\n--steps 12", {"prompt": "a fox", "seed": 11, "steps": 12}),
    # no flags at all
    ("just a fox", {"prompt": "just a fox"}),
    ("  padded fox  ", {"prompt": "padded fox"}),
]


@pytest.mark.parametrize("text, expected", ACCEPTED, ids=[t for t, _ in ACCEPTED])
def test_parse_prompt_accepts(text, expected):
    options = parse_prompt(text)
    assert options == RequestOptions(**expected)


def test_every_documented_flag_is_parsed():
    examples = {name: example for name, (_, example) in FLAGS.items()}
    for name, example in examples.items():
        options = parse_prompt(f"a fox {example}")
        field = FLAGS[name][0]
        if field == "size":
            assert (options.width, options.height) == (768, 512), name
        else:
            assert getattr(options, field) is not None, name
        assert options.prompt == "a fox", name


@pytest.mark.parametrize("text", [
    "một người phụ nữ mặc áo dài",
    "một người phụ nữ mặc áo dài đứng bên hồ Hoàn Kiếm, ánh hoàng hôn",
    "a cat 🐱 wearing a 🎩, ✨ sparkles ✨",
    "富士山と桜、浮世絵風",
    "한복을 입은 여자",
    "Ελληνικό νησί, مدينة عربية",
    "café naïve façade",
])
def test_unicode_prompts_kept_intact(text):
    assert parse_prompt(text).prompt == text
    assert parse_prompt(f"{text} --seed 1 --no {text}") == RequestOptions(prompt=text, negative_prompt=text, seed=1)
    request = make(text)
    assert request.prompt == text


def test_decomposed_unicode_is_not_mangled():
    nfd = "mo\u0323t ngu\u031bo\u031b\u0300i"  # "một người" typed with combining marks
    assert parse_prompt(nfd).prompt == nfd


@pytest.mark.parametrize("text, expected", [
    ("a\x00cat", "a cat"),
    ("a cat\x00", "a cat"),
    ("\x00\x00a cat", "a cat"),
    ("a \x1b[31mred\x1b[0m cat", "a  [31mred [0m cat"),
    ("a\x07cat\x7f", "a cat"),
    ("a\rcat", "a cat"),
])
def test_control_characters_and_nul_are_removed(text, expected):
    prompt = parse_prompt(text).prompt
    assert prompt == expected
    assert not any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in prompt)


def test_control_characters_removed_from_flag_values_too():
    options = parse_prompt("a cat --no blur\x00ry\x1b --seed 4\x00")
    assert options.negative_prompt == "blur ry"
    assert options.seed == 4


# Everything str.splitlines splits on: each would start a new line of the PNG's `parameters` text.
LINE_BREAKS = ["\n", "\r\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def test_line_breaks_are_all_that_str_splitlines_splits_on():
    every = "".join(chr(i) for i in range(0x110000))
    assert {c for c in every if len(f"a{c}b".splitlines()) > 1} == {b[-1] for b in LINE_BREAKS}


@pytest.mark.parametrize("br", LINE_BREAKS)
def test_line_breaks_in_prompts_become_one_space(br):
    options = parse_prompt(f"a red{br}circle{br}--seed 3{br}--no blurry,{br}text{br}")
    assert (options.prompt, options.negative_prompt, options.seed) == ("a red circle", "blurry, text", 3)
    options = options_from_fields(f"a red{br}circle", negative_prompt=f"{br}blurry,{br}text")
    assert (options.prompt, options.negative_prompt) == ("a red circle", "blurry, text")
    assert len(make(f"line one{br}line two").prompt.splitlines()) == 1


def test_tabs_are_kept_inside_the_prompt():
    # A tab splits no line; the CLIP tokenizer reads it as a space (tests/engine/test_prompt_weights.py).
    assert parse_prompt("line one\nline\ttwo").prompt == "line one line\ttwo"


# A prompt that would forge the lines of the PNG's `parameters` text (AUTOMATIC1111's infotext).


@pytest.mark.parametrize("prompt", [
    INJECTION,
    "Negative prompt: injected",
    "  Negative prompt:injected --seed 1",
    "a red circle Negative prompt: injected",  # other readers (sd-parsers) split the text at the label anywhere
    "<lora:x:1>\nNegative prompt: injected",
])
def test_the_negative_prompt_label_in_a_prompt_is_refused_saying_what_to_do(prompt):
    for parse in (parse_prompt, options_from_fields):
        error = user_error(parse, prompt)
        assert error.key == "prompt_negative_label"
        assert '"Negative prompt:"' in str(error) and "--no" in str(error)
        assert "--no" in error.render("vi")


def test_the_negative_prompt_label_made_by_merging_two_prompts_is_refused():
    error = user_error(merge_options, parse_prompt("a Negative --seed 1"), options_from_fields("prompt: injected"))
    assert error.key == "prompt_negative_label"


def test_a_chat_injection_is_written_to_the_png_on_its_lines(tmp_path):
    """Chat text -> request -> the PNG the worker writes (bot.outputs.save_result): a prompt and a
    negative prompt typed over several lines cannot forge the settings."""
    from types import SimpleNamespace

    from PIL import Image

    from bot.outputs import save_result

    forged = FORGED_SETTINGS
    assert user_error(parse_prompt, INJECTION).key == "prompt_negative_label"
    request = make(f"a red circle\n{forged}\n--seed 5 --no blurry\n{forged}")
    result = SimpleNamespace(request=request, images=[Image.new("RGB", (8, 8))], seeds=request.seeds(),
                             model_fingerprint="0123456789abcdef")
    [path] = save_result(result, "imagebot test", tmp_path, "job").images
    read = read_back(path)
    assert (read.prompt, read.negative_prompt) == (f"a red circle {forged}", f"blurry {forged}")
    assert (read.steps, read.seed, read.width, read.height) == (25, 5, 512, 512)


@pytest.mark.parametrize("kwargs", [
    {"prompt": "a fox --no Negative prompt: blurry"},
    {"prompt": "a fox", "negative_prompt": "Negative prompt: blurry"},
    {"prompt": "a fox", "negative_prompt": "blurry\nNegative prompt: text"},
])
def test_the_negative_prompt_label_in_a_negative_prompt_is_refused(kwargs):
    error = user_error(parse_prompt, kwargs["prompt"]) if len(kwargs) == 1 else user_error(options_from_fields, **kwargs)
    assert error.key == "negative_prompt_label"
    assert '"Negative prompt:"' in str(error) and "--no blurry" in str(error)


@pytest.mark.parametrize("prompt", ["negative prompt: a cat", "NEGATIVE PROMPT: a cat", "Negative prompts a cat",
                                    "a cat, negative space"])
def test_text_that_is_not_the_label_is_a_prompt_like_any_other(prompt):
    # A1111 and sd-parsers look for "Negative prompt:" as written.
    assert parse_prompt(prompt).prompt == prompt


@pytest.mark.parametrize("char", ["\x85", "\x9b", "\x80", "\x9f"])
def test_c1_control_characters_are_removed(char):
    assert char not in parse_prompt(f"a{char}cat --no x{char}y").prompt
    assert char not in parse_prompt(f"a{char}cat --no x{char}y").negative_prompt


# --- inline flags: what is refused, and what the message says ------------------------------

# (typed text, words the English message must contain)
REFUSED = [
    # a flag without a value
    ("a cat --seed", ["--seed needs a value", "--seed 42"]),
    ("a cat --no", ["--no needs a value", "--no blurry, text"]),
    ("a cat --ar", ["--ar needs a value", "16:9"]),
    ("a cat --seed --steps 3", ["--seed needs a value"]),
    ("a cat \u2014seed", ["--seed needs a value"]),
    # unknown flags list what is allowed
    ("a cat --foo 1", ["Unknown option --foo", "--ar", "--seed", "--no", "--steps", "--cfg", "--model",
                       "--size", "--scheduler"]),
    ("a cat --Foo", ["Unknown option --foo"]),
    ("a cat --seeds 3", ["Unknown option --seeds"]),
    # the same setting twice, also through aliases
    ("a cat --seed 1 --seed 2", ["--seed was given twice"]),
    ("a cat --seed 1 --SEED 1", ["--seed was given twice"]),
    ("a cat --cfg 3 --guidance 4", ["--guidance was given twice"]),
    ("a cat --ar 1:1 --aspect 2:3", ["--aspect was given twice"]),
    ("a cat --no x --neg y", ["--neg was given twice"]),
    ("a cat --n 1 --count 2", ["--count was given twice"]),
    ("a cat --scheduler ddim --sampler ddim", ["--sampler was given twice"]),
    # size and aspect together
    ("a cat --size 768x512 --ar 16:9", ["--size or --ar, not both"]),
    ("a cat --ar 16:9 --size 768x512", ["--size or --ar, not both"]),
    # not numbers
    ("a cat --steps ten", ["steps must be a whole number", "'ten'"]),
    ("a cat --seed 4.5", ["seed must be a whole number", "'4.5'"]),
    ("a cat --seed 0x10", ["seed must be a whole number", "'0x10'"]),
    ("a cat --n two", ["count must be a whole number", "'two'"]),
    ("a cat --cfg nan", ["guidance must be a number", "'nan'"]),
    ("a cat --cfg inf", ["guidance must be a number", "'inf'"]),
    ("a cat --cfg -inf", ["guidance must be a number", "'-inf'"]),
    ("a cat --cfg 1e400", ["guidance must be a number", "'1e400'"]),
    ("a cat --cfg 7,5", ["guidance must be a number", "'7,5'"]),
    ("a cat --seed 42 on a mat", ["seed must be a whole number", "'42 on a mat'"]),
    # sizes, aspects
    ("a cat --ar 0:1", ["Aspect ratio must look like 16:9", "'0:1'"]),
    ("a cat --ar 1:0", ["Aspect ratio must look like 16:9", "'1:0'"]),
    ("a cat --ar 16-9", ["Aspect ratio must look like 16:9", "'16-9'"]),
    ("a cat --ar wide", ["Aspect ratio must look like 16:9", "'wide'"]),
    ("a cat --ar 10:1", ["Aspect ratio 10:1 is too extreme", "1:4 to 4:1"]),
    ("a cat --ar 1:5", ["Aspect ratio 1:5 is too extreme", "1:4 to 4:1"]),
    ("a cat --size 768x", ["Size must look like 768x512", "'768x'"]),
    ("a cat --size 768", ["Size must look like 768x512", "'768'"]),
    ("a cat --size 768x512x3", ["Size must look like 768x512"]),
    ("a cat --size -768x512", ["Size must look like 768x512"]),
    # model names that could escape the model folder, or are not names
    ("a cat --model ../../etc", ["'../../etc' is not a model name", "letters, digits"]),
    ("a cat --model ..", ["'..' is not a model name"]),
    ("a cat --model .hidden", ["'.hidden' is not a model name"]),
    ("a cat --model a/b", ["'a/b' is not a model name"]),
    ("a cat --model a\\b", ["is not a model name"]),
    ("a cat --model /etc/passwd", ["'/etc/passwd' is not a model name"]),
    ("a cat --model mô_hình", ["'mô_hình' is not a model name"]),
    ("a cat --model two words", ["'two words' is not a model name"]),
    ("a cat --model " + "a" * 65, ["is not a model name"]),
    # schedulers
    ("a cat --scheduler warp9", ["Unknown scheduler 'warp9'", "euler_a", "dpm++"]),
]


@pytest.mark.parametrize("text, needles", REFUSED, ids=[t[:50] for t, _ in REFUSED])
def test_parse_prompt_refuses(text, needles):
    message = str(user_error(parse_prompt, text))
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# (typed text, the exact English message) for checks done when resolving
RANGE_ERRORS = [
    ("a cat --steps 500", "steps must be 1-50, got 500."),
    ("a cat --steps 0", "steps must be 1-50, got 0."),
    ("a cat --steps -5", "steps must be 1-50, got -5."),
    ("a cat --n 0", "count must be 1-4, got 0."),
    ("a cat --n 99", "count must be 1-4, got 99."),
    ("a cat --count -1", "count must be 1-4, got -1."),
    ("a cat --cfg 31", "guidance must be 0-30, got 31."),
    ("a cat --cfg 30.5", "guidance must be 0-30, got 30.5."),
    ("a cat --cfg -1", "guidance must be 0-30, got -1."),
    ("a cat --seed 4294967296", "seed must be 0-4294967295, got 4294967296."),
    ("a cat --seed -2", "seed must be 0-4294967295, got -2."),
    ("a cat --seed 999999999999", "seed must be 0-4294967295, got 999999999999."),
]


@pytest.mark.parametrize("text, message", RANGE_ERRORS, ids=[t for t, _ in RANGE_ERRORS])
def test_out_of_range_values_are_refused_with_the_allowed_range(text, message):
    error = user_error(make, text)
    assert str(error) == message
    assert error.key == "out_of_range"


@pytest.mark.parametrize("text", ["a cat --steps 1", "a cat --steps 50", "a cat --n 1", "a cat --n 4",
                                  "a cat --cfg 0", "a cat --cfg 30", "a cat --seed 0", "a cat --seed 4294967295"])
def test_range_ends_are_inclusive(text):
    make(text)


def test_range_limits_come_from_the_config():
    limits = Limits(max_steps=150, max_images=8, max_guidance=12.5)
    assert make("a cat --steps 150 --n 8", limits=limits).steps == 150
    assert str(user_error(make, "a cat --steps 151", limits=limits)) == "steps must be 1-150, got 151."
    assert str(user_error(make, "a cat --cfg 13", limits=limits)) == "guidance must be 0-12.5, got 13."


@pytest.mark.parametrize("digits", ["9" * 13, "1" * 40, "9" * 10_000])
def test_huge_digit_strings_are_refused_with_a_short_message(digits):
    for flag in ("seed", "steps", "n"):
        error = user_error(make, f"a cat --{flag} {digits}")
        assert len(str(error)) < 200
        assert str(error).startswith(("seed", "steps", "count"))
    error = user_error(parse_prompt, f"a cat --cfg {digits}")
    assert len(str(error)) < 200


def test_huge_seed_message_names_the_allowed_range():
    # 20-digit (64-bit) seeds are common in other tools (ComfyUI), so users paste them.
    message = str(user_error(make, "a cat --seed 18446744073709551615"))
    assert "0-4294967295" in message


@pytest.mark.parametrize("field", ["seed", "steps", "count", "guidance"])
def test_huge_json_integers_give_a_user_error(field):
    # json.loads accepts integers with hundreds of digits; float() of them overflows.
    with pytest.raises(UserError):
        resolve(options_from_fields("a cat", **{field: 10**400}), VARIANTS, "demo", LIMITS)


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "\x00\x00", "--seed 1", "--seed 1 --ar 16:9 --no text",
                                  "\u2014seed 5"])
def test_empty_prompt_is_refused(text):
    error = user_error(make, text)
    assert error.key == "prompt_empty"
    assert "The prompt is empty" in str(error)
    assert "/imagine" in str(error)  # shows how to write one


def test_long_prompt_gives_length_and_limit():
    error = user_error(make, "a" * 10_000)
    assert str(error) == "The prompt is 10000 characters long; the limit is 1000."
    make("a" * 1000)  # exactly the limit is fine
    assert "1001 characters" in str(user_error(make, "a" * 1001))


def test_long_prompt_limit_counts_only_the_prompt_not_the_flags():
    assert make("a" * 1000 + " --seed 1 --steps 10").prompt == "a" * 1000


def test_long_negative_prompt_gives_length_and_limit():
    error = user_error(make, "a cat --no " + "b" * 2000)
    assert str(error) == "The negative prompt is 2000 characters long; the limit is 1000."


def test_long_prompt_limit_from_the_config():
    error = user_error(make, "a" * 300, limits=Limits(max_prompt_chars=200))
    assert str(error) == "The prompt is 300 characters long; the limit is 200."


def test_many_flags_in_a_big_prompt_parse_quickly():
    text = "word " * 2000 + "--seed 1 " + "--no " + "x, " * 1000
    options = parse_prompt(text)
    assert options.seed == 1 and options.negative_prompt.startswith("x, x,")


def test_long_value_is_shortened_in_messages():
    error = user_error(parse_prompt, "a cat --steps " + "x" * 5000)
    assert len(str(error)) < 120
    assert "…" in str(error)


def test_long_unknown_flag_is_shortened_in_messages():
    error = user_error(parse_prompt, "a cat --" + "x" * 5000 + " 1")
    assert len(str(error)) < 500


def test_user_error_has_a_vietnamese_rendering():
    error = user_error(make, "a cat --steps 500")
    assert error.render("vi") == "steps phải trong khoảng 1-50, nhận được 500."
    assert error.render("en") == str(error)


# --- resolve: defaults, sizes, models, seeds ----------------------------------------------


def test_defaults_come_from_the_chosen_variant():
    request = make("a fox --seed 1 --model sd21")
    assert (request.model, request.width, request.height) == ("sd21", 768, 768)
    assert (request.steps, request.guidance, request.scheduler) == (30, 9.0, "euler")
    assert request.negative_prompt == "lowres"
    assert request.count == 1

    request = make("a fox --seed 1")
    assert request.model == "demo"
    assert (request.width, request.height, request.steps, request.guidance) == (512, 512, 25, 7.0)
    assert (request.scheduler, request.negative_prompt) == ("dpm++", "")

    request = make("a fox", default="finetuned")
    assert (request.model, request.steps, request.guidance) == ("finetuned", 40, 5.5)


def test_explicit_values_win_over_defaults():
    request = make("a fox --model sd21 --steps 12 --cfg 3.5 --scheduler ddim --size 640x448 --no rain --n 3 --seed 5")
    assert request == GenerationRequest(
        prompt="a fox", negative_prompt="rain", model="sd21", seed=5, steps=12, guidance=3.5,
        width=640, height=448, count=3, scheduler="ddim",
    )


def test_empty_negative_prompt_clears_the_default():
    request = resolve(options_from_fields("a fox", negative_prompt="", model="sd21"), VARIANTS, "demo", LIMITS)
    assert request.negative_prompt == ""


@pytest.mark.parametrize("native", [(512, 512), (768, 768), (64, 64), (1024, 1024), (512, 768)])
@pytest.mark.parametrize("aspect", [(16, 9), (9, 16), (3, 2), (2, 3), (1, 1), (4, 1), (1, 4), (21, 9), (4, 3)])
def test_size_for_aspect_keeps_pixels_and_ratio(native, aspect):
    width, height = size_for_aspect(aspect, native)
    assert width % 8 == 0 and height % 8 == 0
    area = native[0] * native[1]
    assert abs(width * height - area) / area < 0.25  # about the native pixel count
    # the ratio is as close as multiples of 8 allow
    assert abs(width / height - aspect[0] / aspect[1]) <= (aspect[0] / aspect[1]) * (8 / min(width, height))
    if native[0] >= 512:
        assert abs(width * height - area) / area < 0.05
        assert abs(width / height - aspect[0] / aspect[1]) / (aspect[0] / aspect[1]) < 0.03


@pytest.mark.parametrize("native, aspect, expected", [
    ((512, 512), (16, 9), (680, 384)),
    ((512, 512), (1, 1), (512, 512)),
    ((512, 512), (4, 1), (1024, 256)),
    ((768, 768), (16, 9), (1024, 576)),
    ((768, 768), (9, 16), (576, 1024)),
    ((64, 64), (4, 1), (128, 32)),
])
def test_size_for_aspect_examples(native, aspect, expected):
    assert size_for_aspect(aspect, native) == expected


def test_aspect_on_a_512_model_through_resolve():
    request = make("a fox --ar 16:9")
    assert (request.width, request.height) == (680, 384)
    request = make("a fox --ar 2:3 --model sd21")
    assert request.width % 8 == 0 and request.height % 8 == 0
    assert abs(request.width / request.height - 2 / 3) < 0.02
    assert abs(request.width * request.height - 768 * 768) / (768 * 768) < 0.05


def test_aspect_on_a_64px_model_with_small_side_limit():
    request = make("a fox --ar 16:9", variants={"tiny": TINY}, default="tiny", limits=Limits(min_side=8))
    assert (request.width, request.height) == (88, 48)


@pytest.mark.parametrize("native, aspect", [((768, 768), "2:1"), ((768, 768), "21:9"), ((768, 768), "1:4"),
                                            ((64, 64), "16:9"), ((64, 64), "3:4")])
def test_allowed_aspect_always_gives_a_size_within_limits(native, aspect):
    # The parser accepts every ratio from 1:4 to 4:1, so resolve should fit the derived size into
    # [min_side, max_side] keeping the ratio, not refuse a width/height the user never typed.
    variants = {"m": VariantDefaults(width=native[0], height=native[1])}
    request = make(f"a fox --ar {aspect}", variants=variants, default="m")
    w, h = map(int, aspect.split(":"))
    assert LIMITS.min_side <= request.width <= LIMITS.max_side
    assert LIMITS.min_side <= request.height <= LIMITS.max_side
    assert request.width % 8 == 0 and request.height % 8 == 0
    assert abs(request.width / request.height - w / h) / (w / h) < 0.1


@pytest.mark.parametrize("value, expected", [
    (0, 8), (1, 8), (8, 8), (11, 8), (13, 16), (512, 512), (770, 768), (764, 768), (1023, 1024), (682.67, 680),
])
def test_snap8(value, expected):
    assert snap(value, 8) == expected


@pytest.mark.parametrize("size, expected", [
    ("770x512", (768, 512)), ("512x770", (512, 768)), ("513x511", (512, 512)), ("1020x100", (1024, 96)),
    ("64x64", (64, 64)), ("1024x1024", (1024, 1024)),
])
def test_explicit_sizes_snap_to_multiples_of_8(size, expected):
    request = make(f"a fox --size {size}")
    assert (request.width, request.height) == expected


@pytest.mark.parametrize("size, shown", [("24x512", "24x512"), ("512x2048", "512x2048"), ("8x8", "8x8"),
                                         ("1100x512", "1104x512"), ("99999x5", "99999x8")])
def test_side_limits(size, shown):
    message = str(user_error(make, f"a fox --size {size}"))
    assert "Width and height must be 32-1024 pixels" in message
    if size != "99999x5":
        assert f"got {shown}." in message
    else:
        assert "got 100000x8." in message


@pytest.mark.parametrize("limits, size", [
    (Limits(max_pixels=512 * 512), "1024x1024"),
    (Limits(max_pixels=512 * 512), "1000x600"),
    (Limits(max_pixels=512 * 512), "1024x264"),
    (Limits(max_pixels=300_000), "777x777"),
    (Limits(max_side=2048, max_pixels=1024 * 1024), "2048x2048"),
    (Limits(max_side=2048, max_pixels=1024 * 1024), "2048x600"),
    (Limits(min_side=256, max_side=2048, max_pixels=768 * 768), "2048x300"),
])
def test_too_many_pixels_names_the_limit_and_suggests_a_size_that_fits(limits, size):
    error = user_error(make, f"a fox --size {size}", limits=limits)
    assert error.key == "too_many_pixels"
    message = str(error)
    w, h = error.params["width"], error.params["height"]
    assert f"{w}x{h} is {w * h} pixels; the limit is {limits.max_pixels}" in message
    example = error.params["example"]
    assert f"(e.g. {example})" in message
    ew, eh = map(int, example.split("x"))
    assert ew % 8 == 0 and eh % 8 == 0
    assert ew * eh <= limits.max_pixels
    assert limits.min_side <= ew <= limits.max_side and limits.min_side <= eh <= limits.max_side
    assert ew <= w and eh <= h
    # and the suggestion really is accepted
    assert make(f"a fox --size {example}", limits=limits).width == ew


def test_pixel_limit_also_applies_to_model_defaults():
    big = {"big": VariantDefaults(width=1024, height=1024)}
    error = user_error(make, "a fox", variants=big, default="big", limits=Limits(max_pixels=512 * 512))
    assert error.key == "too_many_pixels"


def test_unknown_model_lists_the_available_ones():
    error = user_error(make, "a fox --model nope")
    assert str(error) == "There is no model 'nope'. Available: demo, finetuned, sd21."


def test_unknown_default_model_is_reported_too():
    error = user_error(make, "a fox", default="gone")
    assert "There is no model 'gone'" in str(error)


def test_model_names_are_case_sensitive():
    assert "There is no model 'Demo'" in str(user_error(make, "a fox --model Demo"))


def test_empty_registry_says_where_to_put_a_model():
    error = user_error(make, "a fox", variants={}, models_dir="/srv/imagebot/models/")
    message = str(error)
    assert error.key == "no_models"
    assert "No model is installed" in message
    assert "/srv/imagebot/models/demo/" in message
    assert "variant.toml" in message
    assert "model_index.json" in message and ".safetensors" in message
    assert "/srv/imagebot/models/demo/" in error.render("vi")


def test_empty_registry_default_folder_name():
    message = str(user_error(make, "a fox --model mine", variants={}))
    assert "models/mine/" in message


def test_omitted_seed_is_random_recorded_and_in_range():
    requests = [make("a fox") for _ in range(20)]
    seeds = [r.seed for r in requests]
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)
    assert len(set(seeds)) > 1
    assert requests[0].to_dict()["seed"] == seeds[0]


def test_explicit_seed_is_kept():
    assert {make("a fox --seed 123").seed for _ in range(5)} == {123}


@pytest.mark.parametrize("seed, count, expected", [
    (10, 1, [10]),
    (10, 4, [10, 11, 12, 13]),
    (MAX_SEED, 3, [MAX_SEED, 0, 1]),
    (MAX_SEED - 1, 4, [MAX_SEED - 1, MAX_SEED, 0, 1]),
    (0, 2, [0, 1]),
])
def test_seeds_count_up_and_wrap(seed, count, expected):
    request = GenerationRequest(prompt="p", negative_prompt="", model="demo", seed=seed, steps=1,
                                guidance=1.0, width=64, height=64, count=count)
    assert request.seeds() == expected


def test_seeds_through_resolve():
    assert make("a fox --seed 4294967294 --n 3").seeds() == [4294967294, 4294967295, 0]


BASE = GenerationRequest(prompt="a fox", negative_prompt="", model="demo", seed=1, steps=20, guidance=7.0,
                         width=512, height=512)


@pytest.mark.parametrize("change", [
    {"prompt": "a wolf"}, {"negative_prompt": "rain"}, {"seed": 99}, {"count": 3},
])
def test_batch_key_same_for_compatible_requests(change):
    other = GenerationRequest(**{**BASE.to_dict(), **change})
    assert other.batch_key() == BASE.batch_key()


@pytest.mark.parametrize("change", [
    {"model": "sd21"}, {"width": 768}, {"height": 768}, {"steps": 21}, {"guidance": 7.5},
    {"scheduler": "euler"}, {"init_image": "/tmp/x.png", "strength": 0.5}, {"strength": 0.3},
])
def test_batch_key_differs_when_the_pipeline_call_differs(change):
    other = GenerationRequest(**{**BASE.to_dict(), **change})
    assert other.batch_key() != BASE.batch_key()


def test_batch_key_of_resolved_requests():
    assert make("a fox --seed 1").batch_key() == make("a wolf --seed 2 --no rain").batch_key()
    assert make("a fox --seed 1").batch_key() != make("a fox --seed 1 --steps 26").batch_key()


@pytest.mark.parametrize("request_", [
    BASE,
    GenerationRequest(prompt="một người phụ nữ 🐱", negative_prompt="blurry, text", model="sd21", seed=MAX_SEED,
                      steps=50, guidance=12.5, width=768, height=512, count=4, scheduler="euler_a",
                      init_image="state/outputs/1.png", strength=0.6),
])
def test_to_dict_from_dict_round_trip(request_):
    data = request_.to_dict()
    assert isinstance(data, dict) and data["seed"] == request_.seed
    assert GenerationRequest.from_dict(data) == request_


def test_from_dict_ignores_unknown_keys():
    data = {**BASE.to_dict(), "added_later": 1}
    assert GenerationRequest.from_dict(data) == BASE


def test_strength_is_checked_and_only_kept_with_an_init_image():
    options = options_from_fields("a fox", init_image="src.png", strength="0.5", seed=1)
    assert resolve(options, VARIANTS, "demo", LIMITS).strength == 0.5
    assert resolve(options_from_fields("a fox", strength=0.5), VARIANTS, "demo", LIMITS).strength is None
    error = user_error(resolve, options_from_fields("a fox", init_image="x.png", strength=1.5), VARIANTS, "demo",
                       LIMITS)
    assert str(error) == "--strength must be 0.1-1 (how far the image may change), got 1.5."


# --- keyword options (slash commands, HTTP JSON, CLI) ---------------------------------------

# (keyword options, expected RequestOptions fields)
FIELDS_OK = [
    ({"seed": 42}, {"seed": 42}),
    ({"seed": "42"}, {"seed": 42}),
    ({"seed": " 42 "}, {"seed": 42}),
    ({"seed": 42.0}, {"seed": 42}),
    ({"steps": 30}, {"steps": 30}),
    ({"count": "3"}, {"count": 3}),
    ({"guidance": 7}, {"guidance": 7.0}),
    ({"guidance": 7.5}, {"guidance": 7.5}),
    ({"guidance": "7.5"}, {"guidance": 7.5}),
    ({"guidance": ".5"}, {"guidance": 0.5}),
    ({"width": 768, "height": "512"}, {"width": 768, "height": 512}),
    ({"size": "768x512"}, {"width": 768, "height": 512}),
    ({"aspect": "16:9"}, {"aspect": (16, 9)}),
    ({"aspect": (3, 2)}, {"aspect": (3, 2)}),
    ({"aspect": "4/3"}, {"aspect": (4, 3)}),
    ({"model": "finetuned"}, {"model": "finetuned"}),
    ({"scheduler": "Euler A"}, {"scheduler": "euler_a"}),
    ({"negative_prompt": "blurry\x00"}, {"negative_prompt": "blurry"}),
    ({"init_image": "a.png", "strength": "0.4"}, {"init_image": "a.png", "strength": 0.4}),
]


@pytest.mark.parametrize("kwargs, expected", FIELDS_OK, ids=[repr(k) for k, _ in FIELDS_OK])
def test_options_from_fields_accepts_typed_values(kwargs, expected):
    options = options_from_fields("a fox", **kwargs)
    assert options == RequestOptions(prompt="a fox", **expected)
    for name, value in expected.items():
        assert type(getattr(options, name)) is type(value), name


# (keyword options, words the message must contain)
FIELDS_REFUSED = [
    ({"seed": True}, ["seed must be a whole number", "'True'"]),
    ({"steps": False}, ["steps must be a whole number"]),
    ({"count": True}, ["count must be a whole number"]),
    ({"guidance": True}, ["guidance must be a number", "'True'"]),
    ({"strength": False}, ["strength must be a number"]),
    ({"steps": 30.5}, ["steps must be a whole number", "'30.5'"]),
    ({"seed": float("nan")}, ["seed must be a whole number"]),
    ({"seed": float("inf")}, ["seed must be a whole number"]),
    ({"guidance": float("nan")}, ["guidance must be a number"]),
    ({"guidance": float("inf")}, ["guidance must be a number"]),
    ({"guidance": "1e5"}, ["guidance must be a number"]),
    ({"steps": [30]}, ["steps must be a whole number"]),
    ({"steps": None, "width": "wide"}, ["width must be a whole number"]),
    ({"size": "768x512", "width": 768}, ["--size was given twice"]),
    ({"size": "768x512", "aspect": "16:9"}, ["--size or --ar, not both"]),
    ({"width": 512, "aspect": "16:9"}, ["--size or --ar, not both"]),
    ({"aspect": (0, 9)}, ["Aspect ratio must look like 16:9"]),
    ({"aspect": (9, 1)}, ["too extreme"]),
    ({"model": "../x"}, ["'../x' is not a model name"]),
    ({"scheduler": "nope"}, ["Unknown scheduler 'nope'"]),
]


@pytest.mark.parametrize("kwargs, needles", FIELDS_REFUSED, ids=[repr(k) for k, _ in FIELDS_REFUSED])
def test_options_from_fields_refuses(kwargs, needles):
    message = str(user_error(options_from_fields, "a fox", **kwargs))
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize("prompt", [None, 5, ["a fox"]])
def test_options_from_fields_refuses_a_non_text_prompt(prompt):
    assert user_error(options_from_fields, prompt).key == "prompt_empty"


def test_string_and_number_values_give_the_same_message():
    assert str(user_error(options_from_fields, "x", steps="1.5")) == str(
        user_error(options_from_fields, "x", steps=1.5))


def test_merge_combines_prompts_and_fills_from_both():
    inline = parse_prompt("a fox --seed 3 --no rain")
    explicit = options_from_fields("in the snow", steps=20, model="sd21")
    merged = merge_options(inline, explicit)
    assert merged == RequestOptions(prompt="a fox in the snow", seed=3, negative_prompt="rain", steps=20,
                                    model="sd21")


@pytest.mark.parametrize("inline, explicit", [("", "a fox"), ("a fox", ""), ("--seed 1", "a fox")])
def test_merge_prompt_without_stray_spaces(inline, explicit):
    assert merge_options(parse_prompt(inline), options_from_fields(explicit)).prompt == "a fox"


@pytest.mark.parametrize("text, kwargs, flag", [
    ("a fox --seed 3", {"seed": 4}, "seed"),
    ("a fox --cfg 3", {"guidance": "4"}, "cfg"),
    ("a fox --no rain", {"negative_prompt": "snow"}, "no"),
    ("a fox --size 768x512", {"width": 512}, "size"),
    ("a fox --model sd21", {"model": "finetuned"}, "model"),
    ("a fox --ar 16:9", {"aspect": "3:2"}, "ar"),
])
def test_merge_refuses_conflicting_values(text, kwargs, flag):
    error = user_error(merge_options, parse_prompt(text), options_from_fields("", **kwargs))
    assert str(error) == f"--{flag} was given twice; give it once."


@pytest.mark.parametrize("text, kwargs", [
    ("a fox --seed 3", {"seed": 3}),
    ("a fox --seed 3", {"seed": "3"}),
    ("a fox --cfg 7", {"guidance": 7}),
    ("a fox --ar 16:9", {"aspect": (16, 9)}),
    ("a fox --size 768x512", {"width": 768, "height": 512}),
    ("a fox --scheduler EULER_A", {"scheduler": "euler_a"}),
])
def test_merge_accepts_the_same_value_twice(text, kwargs):
    merged = merge_options(parse_prompt(text), options_from_fields("", **kwargs))
    for name, value in vars(options_from_fields("", **kwargs)).items():
        if name != "prompt" and value is not None:
            assert getattr(merged, name) == value


@pytest.mark.parametrize("text, kwargs", [
    ("a fox --size 768x512", {"aspect": "16:9"}),
    ("a fox --ar 16:9", {"size": "768x512"}),
])
def test_merge_refuses_size_and_aspect_from_different_sources(text, kwargs):
    error = user_error(merge_options, parse_prompt(text), options_from_fields("", **kwargs))
    assert error.key == "flag_conflict"


def test_merged_options_resolve():
    merged = merge_options(parse_prompt("a fox --seed 8 --ar 16:9"), options_from_fields("", steps="12", count=2))
    request = resolve(merged, VARIANTS, "demo", LIMITS)
    assert (request.seed, request.steps, request.count, request.width, request.height) == (8, 12, 2, 680, 384)
    assert request.seeds() == [8, 9]



def test_seed_minus_one_means_random_as_in_other_tools():
    seeds = {make("a cat --seed -1").seed for _ in range(10)}
    assert len(seeds) > 1 and all(0 <= seed <= MAX_SEED for seed in seeds)


SMALL = VariantDefaults(width=32, height=32, steps=3, max_side=128, max_pixels=128 * 96)


def test_a_model_with_its_own_size_limits_refuses_what_it_cannot_draw_naming_its_native_size():
    variants = {"small": SMALL}
    with pytest.raises(UserError) as error:
        resolve(parse_prompt("a cat --size 768x512"), variants, "small", LIMITS)
    assert error.value.key == "model_side_too_large"
    assert str(error.value) == ("small draws images up to 128 px a side, so 768x512 is too large; "
                                "its native size is 32x32.")
    with pytest.raises(UserError) as pixels:
        resolve(parse_prompt("a cat --size 128x128"), variants, "small", LIMITS)
    assert pixels.value.key == "model_pixels_too_large"
    assert (lambda r: (r.width, r.height))(resolve(parse_prompt("a cat --size 64x64"), variants, "small", LIMITS)) \
        == (64, 64)  # twice the native size (an upscale) is fine
    wide = resolve(parse_prompt("a cat --ar 16:9"), variants, "small", Limits(min_side=32))
    assert wide.width <= 128 and wide.width * wide.height <= 128 * 96  # sizes the bot works out fit too


def test_variant_limits_are_checked_where_they_are_written():
    from bot.models.variant import check_defaults

    with pytest.raises(ValueError, match=r"defaults.width \(256\) is over defaults.max_side \(128\)"):
        check_defaults({"width": 256, "max_side": 128}, "defaults")
    with pytest.raises(ValueError, match="max_pixels must be 0"):
        check_defaults({"max_pixels": -1}, "defaults")


# --- AUTOMATIC1111's and Forge's guidance numbers ------------------------------------------------


def _forge(cfg_scale=None, distilled=None, text: str = "a fox", model: str = "demo"):
    from bot.models.variant import FamilyTraits

    variants = {**VARIANTS,
                "flux": VariantDefaults(guidance=3.5, family=FamilyTraits(name="flux1-dev", guidance_kind="distilled",
                                                                           negative_prompt=False)),
                "schnell": VariantDefaults(guidance=0.0, family=FamilyTraits(name="flux1-schnell", guidance_kind="none",
                                                                              negative_prompt=False))}
    options = merge_options(parse_prompt(text), options_from_fields(cfg_scale=cfg_scale,
                                                                    distilled_cfg_scale=distilled))
    return resolve(options, variants, model, LIMITS)


def test_the_cfg_scale_is_the_guidance_of_a_family_that_guides_with_cfg():
    assert _forge(cfg_scale=6, distilled=2).guidance == 6
    assert _forge().guidance == 7  # neither: the model's default


def test_a_distilled_family_takes_the_distilled_scale_and_leaves_the_cfg_scale_out():
    assert _forge(cfg_scale=7, model="flux").guidance == 3.5  # webuiapi sends CFG scale 7 unasked
    assert _forge(cfg_scale=1, distilled=5, model="flux").guidance == 5
    assert _forge(cfg_scale=7, distilled=5, model="schnell").guidance == 0.0  # no guidance: neither


def test_an_inline_cfg_that_disagrees_with_the_scale_the_family_reads_is_refused():
    assert user_error(_forge, cfg_scale=6, text="a fox --cfg 5").key == "flag_twice"
    assert _forge(cfg_scale=5, text="a fox --cfg 5").guidance == 5
    assert _forge(cfg_scale=7, text="a fox --cfg 4", model="flux").guidance == 4
