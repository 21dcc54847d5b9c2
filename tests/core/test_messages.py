"""The en/vi message catalogue, locale choice and UserError rendering (bot/core/messages.py)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from bot.core.errors import UserError
from bot.core.messages import CATALOGUE, FALLBACK_LOCALE, pick_locale, render

EN, VI = CATALOGUE["en"], CATALOGUE["vi"]
BOT = Path(__file__).resolve().parents[2] / "bot"


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def test_catalogue_has_english_and_vietnamese():
    assert set(CATALOGUE) == {"en", "vi"}
    assert FALLBACK_LOCALE == "en"
    assert len(EN) >= 20


def test_every_key_exists_in_both_languages():
    assert sorted(EN) == sorted(VI), f"only en: {set(EN) - set(VI)}, only vi: {set(VI) - set(EN)}"


@pytest.mark.parametrize("key", sorted(EN))
def test_templates_use_the_same_placeholders(key):
    assert placeholders(EN[key]) == placeholders(VI.get(key, "")), key


# Names and labels that read the same in both languages.
SAME_IN_BOTH = {"ui_title", "ui_bot", "ui_seed_label"}


@pytest.mark.parametrize("key", sorted(EN))
def test_templates_are_well_formed_and_translated(key):
    for language in ("en", "vi"):
        template = CATALOGUE[language][key]
        assert template.strip() == template and template, (language, key)
        list(string.Formatter().parse(template))  # raises on a stray "{" or "}"
        assert all(name.isidentifier() for name in placeholders(template)), (language, key)
    if key not in SAME_IN_BOTH:
        assert EN[key] != VI[key], f"{key} is not translated"


def test_every_key_raised_in_the_code_is_in_the_catalogue():
    used = set()
    for path in BOT.rglob("*.py"):
        used |= set(re.findall(r"UserError\(\s*\"([a-z_]+)\"", path.read_text(encoding="utf-8")))
    assert used, "no UserError keys found; has the code moved?"
    assert used <= set(EN), f"missing: {used - set(EN)}"


@pytest.mark.parametrize("locale", ["vi", "vi-VN", "vi_VN", "VI", "Vi-vn", "vi-vn"])
def test_pick_locale_vietnamese(locale):
    assert pick_locale(locale) == "vi"


@pytest.mark.parametrize("locale", ["en", "en-US", "en_GB", "EN", "fr", "fr-FR", "zh-CN", "vie", None, "", "-"])
def test_pick_locale_falls_back_to_english(locale):
    assert pick_locale(locale) == "en"


def test_render_fills_placeholders_in_each_language():
    assert render("out_of_range", "en", name="steps", low=1, high=50, got=500) == "steps must be 1-50, got 500."
    assert render("out_of_range", "vi-VN", name="steps", low=1, high=50, got=500) == \
        "steps phải trong khoảng 1-50, nhận được 500."
    assert render("cancelled") == "The job was cancelled."
    assert render("cancelled", "fr") == "The job was cancelled."
    assert render("cancelled", "vi") == "Yêu cầu đã bị hủy."


def test_render_does_not_interpret_braces_in_values():
    text = render("bad_model_name", "en", got="{got}{0}{__class__}")
    assert "'{got}{0}{__class__}' is not a model name" in text


def test_render_missing_parameter_is_an_error():
    with pytest.raises(KeyError):
        render("out_of_range", "en", name="steps")


@pytest.mark.parametrize("key, params", [
    ("out_of_range", {"name": "steps", "low": 1, "high": 50, "got": 500}),
    ("prompt_empty", {}),
    ("unknown_model", {"got": "nope", "available": "demo, sd21"}),
    ("flag_unknown", {"flag": "foo", "allowed": "--ar, --seed"}),
])
def test_user_error_renders_english_and_vietnamese(key, params):
    error = UserError(key, **params)
    assert error.key == key and error.params == params
    assert str(error) == render(key, "en", **params) == error.render(None) == error.render("en-US")
    vietnamese = error.render("vi")
    assert vietnamese == render(key, "vi", **params)
    assert vietnamese != str(error)
    for value in params.values():
        assert str(value) in vietnamese
    assert error.render("vi_VN") == vietnamese


def test_user_error_is_an_exception_with_the_english_text():
    with pytest.raises(UserError, match=r"^There is no model 'x'\. Available: demo\.$"):
        raise UserError("unknown_model", got="x", available="demo")
