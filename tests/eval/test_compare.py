"""`lmforge compare`: several families on one corpus and one budget, through the API and the command line."""

import json
import math

import pytest

from lmforge.cli.main import main
from lmforge.compare import compare
from lmforge.errors import CheckpointError, ConfigError

# Tiny models so that a whole comparison takes a few seconds; per-family keys carry the family's name.
TINY = {
    "gpt.model.n_layer": 1,
    "gpt.model.n_head": 2,
    "gpt.model.n_embd": 32,
    "gpt.model.block_size": 32,
    "lstm.model.n_embd": 32,
    "lstm.model.n_hidden": 32,
    "lstm.model.block_size": 16,
    "train.batch_size": 4,
    "train.eval_tokens": 512,
    "train.log_every": 1,
    "optim.warmup_steps": 2,
}
ROW_KEYS = {
    "arch",
    "parameters",
    "train_seconds",
    "train_tokens",
    "tokens_per_s",
    "val_loss",
    "val_perplexity",
    "val_bits_per_byte",
    "curve",
    "stop_reason",
}


def check_report(out, archs):
    results = json.loads((out / "results.json").read_text())
    rows = results["archs"]
    assert [r["arch"] for r in rows] == archs
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert math.isfinite(r["val_perplexity"]) and r["val_perplexity"] > 1
        assert math.isfinite(r["val_bits_per_byte"]) and r["parameters"] > 0 and r["curve"]
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(archs)
    assert [line.split("|")[1].split()[0] for line in table[2:]] == archs
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    return {r["arch"]: r for r in rows}


def test_compare_api_token_budget(char_data, tmp_path):
    out = tmp_path / "report"
    archs = ["gpt", "ngram", "lstm"]
    overrides = {**TINY, "ngram.model.order": 3, "lstm.train.eval_every": 8}
    result = compare(char_data, archs, out, budget_tokens=2560, overrides=overrides, progress=False)
    rows = check_report(out, archs)
    assert [r["arch"] for r in result["archs"]] == archs
    gpt, ngram, lstm = rows["gpt"], rows["ngram"], rows["lstm"]
    # The budget holds for the trained families; the n-gram counts the whole training split once.
    assert gpt["train_tokens"] >= 2560 and gpt["train_tokens"] - 2560 < 4 * 32
    assert lstm["train_tokens"] >= 2560 and lstm["stop_reason"] in ("max_steps", "max_tokens")
    assert ngram["stop_reason"] == "fitted" and ngram["overrides"] == {"model.order": 3}
    assert gpt["val_perplexity"] != pytest.approx(ngram["val_perplexity"], rel=1e-3)
    assert lstm["val_perplexity"] != pytest.approx(gpt["val_perplexity"], rel=1e-3)
    # A character model of this tiny corpus is far better than uniform guessing over its alphabet.
    assert ngram["val_perplexity"] < 10
    # The curves go forward in tokens and time: ~20 evaluations under a token budget unless told otherwise.
    assert len(gpt["curve"]) >= 10 and len(lstm["curve"]) == 5
    assert all(
        a["tokens"] < b["tokens"] and a["seconds"] <= b["seconds"]
        for a, b in zip(gpt["curve"], gpt["curve"][1:])
    )
    assert (out / "runs" / "lstm" / "latest").exists()


def test_compare_cli_minute_budget_and_json(char_data, tmp_path, capsys):
    out = tmp_path / "report"
    flags = [f"--{k}={v}" for k, v in TINY.items() if not k.startswith("lstm.")]
    code = main(
        [
            "compare",
            "--data",
            str(char_data),
            "--archs",
            "ngram,gpt",
            "--budget-minutes",
            "0.005",
            "--out",
            str(out),
            "--quiet",
            "--json",
            *flags,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    rows = check_report(out, ["ngram", "gpt"])
    assert printed["archs"][1]["val_loss"] == rows["gpt"]["val_loss"]
    assert rows["gpt"]["stop_reason"] == "max_minutes"
    assert rows["gpt"]["overrides"]["optim.schedule"] == "constant"


def test_compare_refuses_masked_lms_before_training(char_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="bert.*mlm"):
        compare(char_data, ["gpt", "bert"], tmp_path / "api", budget_tokens=100, progress=False)
    assert not (tmp_path / "api").exists()
    code = main(
        [
            "compare",
            "--data",
            str(char_data),
            "--archs",
            "ngram,bert",
            "--budget-tokens",
            "100",
            "--out",
            str(tmp_path / "cli"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: bert")
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget_tokens": 100, "budget_minutes": 1}, "exactly one budget"),
        ({}, "exactly one budget"),
        ({"budget_tokens": 100, "overrides": {"gru.model.n_layer": 3}}, "not compared"),
        ({"budget_tokens": 100, "presets": {"lstm": "zaremba-small"}}, "not compared"),
    ],
)
def test_compare_bad_requests(char_data, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        compare(char_data, ["ngram", "gpt"], tmp_path / "r", progress=False, **kwargs)


def test_compare_will_not_mix_with_an_earlier_report(char_data, tmp_path):
    (tmp_path / "r" / "runs" / "gpt").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="already holds a comparison"):
        compare(char_data, ["ngram"], tmp_path / "r", budget_tokens=100, progress=False)
