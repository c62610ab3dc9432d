"""Snowball stemming of whitespace-separated words (`finetune --stem`, for the classic classifiers): "films",
"filmed" and "filming" all read as "film", which helps a bag of words trained on few examples.

A language model must not be trained on stemmed text: stems delete the endings it has to predict.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from lmforge.errors import ConfigError
from lmforge.extras import require

# ISO 639-1 codes for Snowball's language names.
LANGUAGE_CODES = {
    "ar": "arabic",
    "da": "danish",
    "de": "german",
    "en": "english",
    "es": "spanish",
    "fi": "finnish",
    "fr": "french",
    "hu": "hungarian",
    "it": "italian",
    "nl": "dutch",
    "no": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sv": "swedish",
}


def snowball_language(lang: str) -> str:
    """Snowball's name of a language given by name or ISO code ("en" -> "english")."""
    name = LANGUAGE_CODES.get(lang.lower(), lang.lower())
    if name not in LANGUAGE_CODES.values():
        known = ", ".join(sorted(LANGUAGE_CODES))
        raise ConfigError(
            f"no Snowball stemmer for language {lang!r}; use one of {known} (or its English name)"
        )
    return name


@functools.lru_cache(maxsize=8)
def stemmer(lang: str) -> Callable[[str], str]:
    """The Snowball stemmer of `lang` as a word -> stem function (lower-cases, as Snowball does)."""
    snowball = require("nltk.stem.snowball", extra="classic", feature="stemming (--stem)")
    stem = snowball.SnowballStemmer(snowball_language(lang)).stem
    return functools.lru_cache(maxsize=1 << 16)(stem)


def stem_words(words: list[str], lang: str) -> list[str]:
    stem = stemmer(lang)
    return [stem(w) for w in words]


def stem_text(text: str, lang: str) -> str:
    """`text` with every whitespace-separated word replaced by its stem, joined by single spaces."""
    return " ".join(stem_words(text.split(), lang))
