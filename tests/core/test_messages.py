"""The en/vi message catalogues (the core's in bot/core/messages.py, each frontend's in its
strings.py), locale choice and UserError rendering."""

from __future__ import annotations

import importlib
import pkgutil
import re
import string
from pathlib import Path

import pytest

import bot.frontends
from bot.core import messages
from bot.core.errors import UserError
from bot.core.messages import CORE, FALLBACK_LOCALE, LANGUAGES, STRINGS, Catalogue, pick_locale, render

BOT = Path(__file__).resolve().parents[2] / "bot"


def strings_modules() -> dict[str, object]:
    """The core's catalogue and every frontend's `strings` module, found on disk so a new frontend
    is checked without being listed here."""
    found = {"core": messages}
    for package in pkgutil.iter_modules(bot.frontends.__path__):
        if package.ispkg and (BOT / "frontends" / package.name / "strings.py").is_file():
            found[package.name] = importlib.import_module(f"bot.frontends.{package.name}.strings")
    return found


MODULES = strings_modules()
# (module name, key) of every text, for the per-text checks.
TEXTS = [(name, key) for name, module in MODULES.items() for key in sorted(module.STRINGS[FALLBACK_LOCALE])]
# Names and labels that read the same in both languages.
SAME_IN_BOTH = {"ui_title", "ui_bot", "ui_seed_label"}


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def catalogues_of(path: Path) -> list[Catalogue]:
    """The catalogues that may render the texts named in `path`: its frontend's; any frontend's for
    the modules they share; the core's elsewhere."""
    parts = path.relative_to(BOT).parts
    if parts[0] != "frontends":
        return [CORE]
    if parts[1] in MODULES:
        return [MODULES[parts[1]].TEXTS]
    return [module.TEXTS for name, module in MODULES.items() if name != "core"]


def unknown(keys: set[str], path: Path) -> list[str]:
    return sorted(key for key in keys if not any(key in catalogue for catalogue in catalogues_of(path)))


def test_every_frontend_has_its_strings():
    assert set(MODULES) == {"core", "discord", "telegram", "web"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_catalogue_has_english_and_vietnamese(name):
    assert tuple(MODULES[name].STRINGS) == LANGUAGES
    assert FALLBACK_LOCALE == "en"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_key_exists_in_both_languages(name):
    en, vi = MODULES[name].STRINGS["en"], MODULES[name].STRINGS["vi"]
    assert sorted(en) == sorted(vi), f"only en: {set(en) - set(vi)}, only vi: {set(vi) - set(en)}"


def test_no_key_is_in_two_catalogues():
    """A frontend's text never hides the core's (nor another frontend's) under the same key."""
    seen: dict[str, str] = {}
    for name, key in TEXTS:
        assert key not in seen, f"{key} is in {seen[key]} and {name}"
        seen[key] = name


def test_the_core_keeps_only_its_own_texts():
    assert len(STRINGS["en"]) >= 20
    assert not [key for key in STRINGS["en"] if key.startswith(("dc_", "tg_", "ui_"))]


@pytest.mark.parametrize("name, key", TEXTS)
def test_templates_use_the_same_placeholders(name, key):
    strings = MODULES[name].STRINGS
    assert placeholders(strings["en"][key]) == placeholders(strings["vi"].get(key, "")), key


@pytest.mark.parametrize("name, key", TEXTS)
def test_templates_are_well_formed_and_translated(name, key):
    strings = MODULES[name].STRINGS
    for language in LANGUAGES:
        template = strings[language][key]
        assert template.strip() == template and template, (language, key)
        list(string.Formatter().parse(template))  # raises on a stray "{" or "}"
        assert all(name.isidentifier() for name in placeholders(template)), (language, key)
    if key not in SAME_IN_BOTH:
        assert strings["en"][key] != strings["vi"][key], f"{key} is not translated"


def test_every_key_raised_in_the_code_is_in_its_catalogue():
    """Refusals raised (or reworded) in a frontend are in its catalogue; elsewhere in the core's."""
    raised = 0
    for path in BOT.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        keys = set(re.findall(r"UserError\(\s*\"([a-z_]+)\"", source))
        keys |= set(re.findall(r"reworded\([^)]*?=\s*\"([a-z_]+)\"", source))
        raised += len(keys)
        assert not unknown(keys, path), path
    assert raised, "no UserError keys found; has the code moved?"


def test_every_key_a_frontend_renders_is_in_its_catalogue():
    """Catches a text left behind (or misspelt) when strings move: each literal key a frontend's
    code renders is in that frontend's catalogue."""
    rendered = 0
    for path in (BOT / "frontends").rglob("*.py"):
        keys = set(re.findall(r"(?:render|command_text)\(\s*\"([a-z_]+)\"", path.read_text(encoding="utf-8")))
        rendered += len(keys)
        assert not unknown(keys, path), path
    assert rendered > 100


def test_the_page_gets_its_texts_only():
    from bot.frontends.web.strings import catalogue_for

    english, vietnamese = catalogue_for(None), catalogue_for("vi,en;q=0.8")
    assert set(english) == set(vietnamese) == {key for _, key in TEXTS if key.startswith("ui_")}
    assert english["ui_send"] == "Generate" and vietnamese["ui_send"] != "Generate"


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


def test_a_frontend_catalogue_renders_its_own_texts_and_the_cores():
    telegram = MODULES["telegram"].TEXTS
    assert telegram.render("tg_none", "vi") == "không có"
    assert telegram.render("cancelled", "vi") == "Yêu cầu đã bị hủy."
    assert telegram.explain(UserError("tg_cancel_nothing"), "en") == "You have no job waiting or running."
    assert "tg_none" in telegram and "cancelled" in telegram and "tg_none" not in CORE
    with pytest.raises(KeyError):
        telegram.render("dc_none")  # another frontend's text is not this one's


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


def test_a_frontends_own_refusal_names_its_key_outside_the_frontend():
    assert str(UserError("dc_blocked_word", word="x")) == "dc_blocked_word"
