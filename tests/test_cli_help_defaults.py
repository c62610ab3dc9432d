"""Every command's --help shows honest defaults: no "(default: True)" on a --no-* flag (whose stored True means
the feature stays on), no on/off flag described by its stored value, no "(default: None)" after a help text that
states its default in words."""

from __future__ import annotations

import argparse
import re

import pytest

from lmforge.cli.main import build_parser


def verbs() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The rendered help paragraph of each option, keyed by its first option string."""
    formatter = parser._get_formatter()
    out = {}
    for action in parser._actions:
        if action.option_strings:
            out[action.option_strings[-1]] = (
                " ".join(formatter._expand_help(action).split()) if action.help else ""
            )
    return out


def test_every_verb_is_checked():
    assert {"prepare", "pretrain", "finetune", "evaluate", "generate"} <= set(verbs())


@pytest.mark.parametrize("verb", sorted(verbs()))
def test_help_defaults_are_honest(verb):
    parser = verbs()[verb]
    text = parser.format_help()
    assert "(default: True)" not in text and "(default: False)" not in text
    for flag, help_text in option_help(parser).items():
        if flag.startswith("--no-"):
            assert "default: True" not in help_text, f"{verb} {flag}: {help_text}"
        if re.search(r"\bdefault\b", help_text.replace("(default: None)", "")):
            assert "(default: None)" not in help_text, f"{verb} {flag}: {help_text}"


def test_prepare_no_flags_say_what_they_do():
    help_text = option_help(verbs()["prepare"])
    assert help_text["--no-dedup"] == "keep exact duplicate documents"
    assert "default" not in help_text["--no-clean-whitespace"]
    assert help_text["--split"].endswith("(default: auto)")  # a value-taking option keeps its default
    assert "(default: 0.0)" in help_text["--test-fraction"]


def test_finetune_shows_step_limits_and_the_batch_size_rule():
    help_text = option_help(verbs()["finetune"])
    assert "--max-steps" in help_text and "--max-minutes" in help_text
    assert "16 for ner" in help_text["--batch-size"]
    assert "(default: None)" not in help_text["--batch-size"]
