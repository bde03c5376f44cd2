"""The checks' messages in the learner's language: English, or Korean from a gettext catalog.

Every message of the checks is written ``_("English text with {placeholders}", placeholder=value)``.
``_`` marks the text for extraction (``make messages``: Babel's pybabel extract, update, compile into
``locale/ko/LC_MESSAGES/vislib.po`` and ``.mo``, domain ``vislib``) and returns a ``Message``: the
text's id and its arguments, not yet translated. A message is translated when it is shown
(``str(message)``, printing it, or the ``AssertionError`` that carries it being displayed), in the
language active then, and its arguments are filled in after translation (``str.format``); an
argument that is itself a ``Message`` is shown in the same language. So a module's constant or a
dict of hints built at import time still speaks the language chosen later, and a test can show one
failure in both languages (``Message.render``).

The language: ``use_language("ko")`` or ``use_language("en")`` in a notebook cell, else the locale,
as gettext reads it (``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``, ``LANG``: ``ko_KR.UTF-8`` is Korean;
anything else English).
"""

from __future__ import annotations

import functools
import gettext
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "vislib"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = ("en", "ko")  # English is the source text; Korean comes from the catalog
_LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")  # gettext's order

_chosen: str | None = None  # set by use_language; None follows the locale


def use_language(language: str | None) -> None:
    """Show the checks' messages in ``language``: ``"ko"`` (Korean) or ``"en"`` (English); ``None``
    follows the locale again (``LANG=ko_KR.UTF-8`` is Korean)."""
    global _chosen
    if language is not None and language not in LANGUAGES:
        raise ValueError(_("use_language(language): unknown language {language!r}; choose one of {choices} "
                           "(or None to follow the locale)", language=language, choices=", ".join(LANGUAGES)))
    _chosen = language


def active_language() -> str:
    """The language messages are shown in now: the one chosen with ``use_language``, else the locale's."""
    return _chosen if _chosen is not None else locale_language()


def locale_language(environ: dict | None = None) -> str:
    """``"ko"`` or ``"en"`` from the locale's variables: the first one set decides (``LANGUAGE`` may
    list several languages, ``ko:en``: the first one the checks speak wins)."""
    environ = os.environ if environ is None else environ
    for variable in _LOCALE_VARIABLES:
        value = environ.get(variable, "")
        if not value:
            continue
        for entry in value.split(":") if variable == "LANGUAGE" else [value]:
            code = entry.split(".")[0].split("@")[0].split("_")[0].lower()
            if code in LANGUAGES:
                return code
        return "en"
    return "en"


@functools.cache
def _translations(language: str) -> gettext.NullTranslations:
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)


def translate(msgid: str, language: str) -> str:
    """``msgid``'s text in ``language`` (the catalog's; English is the msgid itself)."""
    return _translations(language).gettext(msgid)


@dataclass(frozen=True, eq=True)
class Message:
    """A message id (the English text, with ``{name}`` placeholders) and its arguments, translated
    when shown. Equal messages are equal keys (a dict of hints keyed by messages)."""

    msgid: str
    args: tuple = ()  # (name, value) pairs

    def __hash__(self) -> int:
        return hash(self.msgid)

    def render(self, language: str) -> str:
        """The message in ``language``, its arguments filled in (messages among them in that language)."""
        values = {name: _shown(value, language) for name, value in self.args}
        return translate(self.msgid, language).format(**values)

    def __str__(self) -> str:
        return self.render(active_language())

    def parts(self) -> Iterator[Message]:
        """This message and every message among its arguments, outermost first."""
        yield self
        for _name, value in self.args:
            if isinstance(value, (Message, Joined)):
                yield from value.parts()


@dataclass(frozen=True)
class Joined:
    """Several messages shown one after the other, ``separator`` between them."""

    items: tuple
    separator: str = "; "

    def render(self, language: str) -> str:
        return self.separator.join(str(_shown(item, language)) for item in self.items)

    def __str__(self) -> str:
        return self.render(active_language())

    def parts(self) -> Iterator[Message]:
        for item in self.items:
            if isinstance(item, (Message, Joined)):
                yield from item.parts()


def _shown(value, language: str):
    return value.render(language) if isinstance(value, (Message, Joined)) else value


def _(msgid: str, **args) -> Message:
    """The message ``msgid`` (English, with ``{name}`` placeholders) with its arguments, translated
    when shown. Write the text itself here, a string literal, so that ``make messages`` extracts it."""
    return Message(msgid, tuple(args.items()))


def joined(items: Iterable, separator: str = "; ") -> Joined:
    return Joined(tuple(items), separator)
