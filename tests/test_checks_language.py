"""The checks' messages in Korean: gettext catalogs managed with Babel (``make messages``), the learner's
locale followed, an explicit switch. The mutation tests assert each hint in both languages
(``hint_coverage.names_the_mistake``); these tests keep the catalogs whole and in step with the source."""

from __future__ import annotations

import ast
import io
import string
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from tests.test_checks_saliency import saliency_autograd, saliency_no_abs
from vislib import checks, hooks
from vislib.checks import language
from vislib.checks.cases import small_cnn
from vislib.checks.harness import CheckFailure, change_in_words
from vislib.checks.language import LOCALE_DIR, Message, _, locale_language, use_language

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "vislib" / "checks"
PO = LOCALE_DIR / "ko" / "LC_MESSAGES" / "vislib.po"
MO = PO.with_suffix(".mo")
LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


@pytest.fixture(autouse=True)
def _follow_the_locale():
    """Each test starts and ends following the locale (no language chosen)."""
    use_language(None)
    yield
    use_language(None)


def _catalog(path: Path):
    with open(path, "rb") as file:
        return read_po(file)


def _msgids(catalog) -> set[str]:
    return {m.id for m in catalog if m.id}


def _fields(text: str) -> list[tuple]:
    """The ``{name!conversion:spec}`` placeholders of ``text``, each once."""
    return sorted({(name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(text)
                   if name is not None})


# --------------------------------------------------------------------------- the catalogs


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> set[str]:
    """The messages in the source now, extracted as `make messages` does (babel.cfg)."""
    pot = tmp_path_factory.mktemp("messages") / "messages.pot"
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "-q", "extract", "-F", "babel.cfg",
                    "-o", str(pot), "."], cwd=ROOT, check=True)
    return _msgids(_catalog(pot))


def test_the_committed_template_and_korean_catalog_are_up_to_date_with_the_source(extracted):
    assert len(extracted) > 250
    assert _msgids(_catalog(ROOT / "messages.pot")) == extracted, "run `make messages`"
    assert _msgids(_catalog(PO)) == extracted, "run `make messages`, then translate the new messages"


def test_every_message_has_a_korean_translation_that_is_not_fuzzy():
    entries = [m for m in _catalog(PO) if m.id]
    missing = [m.id for m in entries if not m.string or not m.string.strip()]
    fuzzy = [m.id for m in entries if m.fuzzy]
    assert not missing and not fuzzy, f"untranslated: {missing}; fuzzy: {fuzzy}"
    assert sum("가" <= c <= "힣" for m in entries for c in m.string) > 5000  # Korean, not copies of the English


def test_each_translation_has_the_placeholders_of_its_message():
    for message in (m for m in _catalog(PO) if m.id):
        assert _fields(message.string) == _fields(message.id), message.id


def test_the_compiled_catalog_matches_the_korean_catalog():
    compiled = io.BytesIO()
    write_mo(compiled, _catalog(PO))
    compiled.seek(0)
    with open(MO, "rb") as file:
        committed = read_mo(file)
    assert {m.id: m.string for m in committed} == {m.id: m.string for m in read_mo(compiled)}, "run `make messages`"


def test_the_catalogs_are_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"vislib.checks" = ["locale/*/LC_MESSAGES/vislib.po", "locale/*/LC_MESSAGES/vislib.mo"]' in pyproject
    assert "messages:" in (ROOT / "Makefile").read_text()


# --------------------------------------------------------------------------- how messages are written


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            yield node


def test_every_message_is_a_string_literal_in_underscore():
    """``_("text {name}", name=...)``: a literal Babel can extract, never an f-string or a variable, and
    what a learner reads (a failure, a printed line) is always such a message."""
    shown = {"AssertionError", "CheckFailure", "ModelChanged", "NotImplementedYet", "TypeError", "ValueError", "print"}
    for path in CHECKS.glob("*.py"):
        for call in _calls(path):
            if call.func.id == "_" and path.name != "language.py":
                assert len(call.args) == 1 and isinstance(call.args[0], ast.Constant) \
                    and isinstance(call.args[0].value, str), f"{path.name}:{call.lineno}: _() of a string literal"
            if call.func.id in shown and call.args:
                assert not isinstance(call.args[0], (ast.Constant, ast.JoinedStr)), \
                    f"{path.name}:{call.lineno}: {call.func.id} of English text, not of a message _(...)"


def test_a_message_is_translated_when_it_is_shown_and_its_arguments_after_translation():
    constant = _("the image")  # made at import time in the checks: still follows the language chosen later
    message = _("your {name} must return {what} as a torch.Tensor, got {type}", name="embed", what=constant,
                type="ndarray")
    assert message.render("en") == "your embed must return the image as a torch.Tensor, got ndarray"
    assert message.render("ko") == "embed에서 돌려줄 image: torch.Tensor여야 함, 받은 type: ndarray"
    use_language("en")
    assert str(message) == message.render("en")
    use_language("ko")
    assert str(message) == message.render("ko")


def test_every_change_hooks_can_report_has_a_translation():
    """The changes come from vislib.hooks in English (also over the wire from the grader's runner)."""
    model = small_cnn(0, inplace=True, batchnorm=True)
    before = hooks.model_state(model)
    model.fc.register_forward_hook(lambda *args: None)
    model.features.relu1.inplace = False
    model.features.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    model.train()
    model(torch.rand(2, 3, 8, 8)).sum().backward()  # .grad, and the running statistics of BatchNorm
    model.fc.weight.requires_grad_(False)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    changes = hooks.state_changes(before, hooks.model_state(model))
    assert len(changes) == 8, changes
    for change in changes:
        message = change_in_words(change)
        assert isinstance(message, Message) and message.render("en") == change
        assert language.translate(message.msgid, "ko") != message.msgid


# --------------------------------------------------------------------------- the learner's language


@pytest.mark.parametrize("environ,expected", [
    ({"LANG": "ko_KR.UTF-8"}, "ko"),
    ({"LANG": "ko_KR"}, "ko"),
    ({"LC_ALL": "ko_KR.UTF-8", "LANG": "en_US.UTF-8"}, "ko"),
    ({"LC_MESSAGES": "ko_KR.UTF-8"}, "ko"),
    ({"LANGUAGE": "ko:en", "LANG": "en_US.UTF-8"}, "ko"),
    ({"LANGUAGE": "fr:ko"}, "ko"),
    ({"LANGUAGE": "en", "LANG": "ko_KR.UTF-8"}, "en"),
    ({"LC_ALL": "C", "LANG": "ko_KR.UTF-8"}, "en"),
    ({"LANG": "en_US.UTF-8"}, "en"),
    ({"LANG": "fr_FR.UTF-8"}, "en"),
    ({"LANG": "C.UTF-8"}, "en"),
    ({}, "en"),
])
def test_the_locale_chooses_the_language(environ, expected):
    assert locale_language(environ) == expected


def _fails(check, fn) -> CheckFailure:
    with pytest.raises(CheckFailure) as caught:
        check(fn)
    return caught.value


def _stub(model, x, target):
    raise NotImplementedError()


def test_a_korean_locale_shows_the_checks_in_korean(monkeypatch, capsys):
    for variable in LOCALE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LANG", "ko_KR.UTF-8")
    failure = _fails(checks.saliency_map, saliency_no_abs)
    shown = "".join(traceback.format_exception_only(type(failure), failure))  # what a notebook shows
    assert "saliency_map의 map (inplace ReLU" in shown and "gradient의 절댓값을 취하기" in shown
    assert str(failure) == failure.render("ko")  # what the grader writes into the feedback
    checks.saliency_map(saliency_autograd)
    checks.saliency_map(_stub)
    assert capsys.readouterr().out.splitlines()[0].startswith("saliency_map: 정답. |d logit / d x|의 colour channel")
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    assert str(failure).startswith("your saliency_map gives a different map (inplace ReLUs")


def test_use_language_overrides_the_locale_and_is_validated(monkeypatch, capsys):
    assert "use_language" in checks.__all__
    monkeypatch.setenv("LANGUAGE", "en")
    failure = _fails(checks.saliency_map, saliency_no_abs)
    checks.use_language("ko")
    assert language.active_language() == "ko" and "절댓값" in str(failure)  # shown after the switch: Korean
    with pytest.raises(checks.NotImplementedYet, match="saliency_map: 아직 구현되지 않음"):
        checks.saliency_map(_stub, strict=True)
    monkeypatch.setenv("LANGUAGE", "ko")
    checks.use_language("en")
    assert str(failure).startswith("your saliency_map gives a different map")
    checks.use_language(None)
    assert language.active_language() == "ko"
    for wrong in ("kr", "korean", "KO", ""):
        with pytest.raises(ValueError, match=r"use_language\(language\).*'" + wrong + "'.*en, ko"):
            checks.use_language(wrong)
    assert language.active_language() == "ko"
