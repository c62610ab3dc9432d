"""Pruning: exact magnitude sparsity, structured GPT shrinking (MHA and GQA), importance ordering, the CLI."""

import json

import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.compress.prune import magnitude_prune, prunable_layers, prune_checkpoint, structured_prune
from lmforge.eval.perplexity import evaluate
from lmforge.models.registry import build_model
from tests.conftest import TINY

LLAMA = {
    "model.position": "rope",
    "model.norm": "rmsnorm",
    "model.activation": "swiglu",
    "model.bias": False,
    "model.tie_embeddings": False,
    "model.n_head": 4,
    "model.n_kv_head": 2,
}


@pytest.fixture(scope="module")
def runs(char_data, tmp_path_factory):
    """A tiny GPT-2 style (2 heads) and Llama style (4 query heads in 2 kv groups) model, trained briefly."""
    out = {}
    for name, extra in (("gpt2", {}), ("llama", LLAMA)):
        run = tmp_path_factory.mktemp(name) / "run"
        lmforge.pretrain(char_data, run, overrides={**TINY, **extra}, max_steps=80, progress=False)
        out[name] = run
    return out


def fresh_gpt(**extra):
    torch.manual_seed(0)
    return build_model(
        "gpt", {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 40, **extra}
    )


@pytest.mark.parametrize("per_layer", [False, True])
def test_magnitude_pruning_reaches_the_asked_sparsity_exactly(per_layer):
    model = fresh_gpt()
    layers = prunable_layers(model)
    with torch.no_grad():
        magnitude_prune(model, 0.3, per_layer=per_layer)
    zeros = [int((m.weight == 0).sum()) for _, m in layers]
    sizes = [m.weight.numel() for _, m in layers]
    if per_layer:
        assert zeros == [round(0.3 * n) for n in sizes]
    else:
        assert sum(zeros) == round(0.3 * sum(sizes)) and len(set(z / n for z, n in zip(zeros, sizes))) > 1
    names = [k for k in model.state_dict()]
    assert not any(k.endswith(("_orig", "_mask")) for k in names)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert int((model.lm_head.weight == 0).sum()) == 0  # the tied output layer / embedding stays whole


def test_magnitude_pruned_checkpoint_reloads_with_its_zeros(runs, tmp_path):
    out = prune_checkpoint(runs["gpt2"], tmp_path / "sparse", "magnitude", 0.5)
    model = lmforge.load(out, device="cpu").model
    weights = [m.weight for _, m in prunable_layers(model)]
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * sum(w.numel() for w in weights))
    assert json.loads((out / "config.json").read_text())["pruning"]["linear_sparsity"] == pytest.approx(
        0.5, abs=1e-4
    )


@pytest.mark.parametrize("extra", [{}, {k.removeprefix("model."): v for k, v in LLAMA.items()}])
def test_structured_pruning_by_zero_keeps_the_logits(extra):
    model = fresh_gpt(**extra).eval()
    small, _ = structured_prune(model, 0.0)
    x = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_structured_pruning_shrinks_the_checkpoint(runs, tmp_path, style):
    out = prune_checkpoint(runs[style], tmp_path / "small", "structured", 0.5)
    original, pruned = lmforge.load(runs[style], device="cpu"), lmforge.load(out, device="cpu")
    assert pruned.model.num_params() < original.model.num_params()
    assert (out / "model.safetensors").stat().st_size < (original.path / "model.safetensors").stat().st_size
    cfg = pruned.model.config
    assert cfg.n_head == original.model.config.n_head // 2 and cfg.head_dim == original.model.config.head_size
    assert cfg.kv_heads == original.model.config.kv_heads // 2 or style == "gpt2"
    assert cfg.hidden == original.model.config.hidden // 2
    assert len(pruned.generate("alice ", max_new_tokens=8, temperature=0)) > 0


def test_pruning_the_least_important_units_hurts_less(runs, char_data):
    lm = lmforge.load(runs["gpt2"], device="cpu")
    original, ppl = lm.model.eval(), {}
    for invert in (False, True):  # invert: remove the most important heads and neurons instead
        lm.model, _ = structured_prune(original, 0.5, invert=invert)
        ppl[invert] = evaluate(lm, char_data)["perplexity"]
    assert ppl[False] < ppl[True]


def test_recovery_keeps_the_zeros_and_lowers_perplexity(runs, char_data, tmp_path):
    plain = prune_checkpoint(runs["gpt2"], tmp_path / "plain", "magnitude", 0.7)
    recovered = prune_checkpoint(
        runs["gpt2"], tmp_path / "rec", "magnitude", 0.7, data=char_data, recover_steps=30
    )
    before, after = lmforge.load(plain, device="cpu"), lmforge.load(recovered, device="cpu")
    for (_, a), (_, b) in zip(prunable_layers(before.model), prunable_layers(after.model)):
        assert torch.equal(a.weight == 0, b.weight == 0)  # the same entries, still exactly zero
    assert evaluate(after, char_data)["perplexity"] < evaluate(before, char_data)["perplexity"]
    assert not any(k.endswith(("_orig", "_mask")) for k in after.model.state_dict())


def test_structured_scores_choose_different_units(runs, char_data, tmp_path):
    # Which score prunes better is not stable at this size (l2 won here once, taylor on a larger run): no ordering.
    weights = {}
    for score in ("l2", "taylor"):
        out = prune_checkpoint(
            runs["llama"], tmp_path / score, "structured", 0.5, data=char_data, score=score
        )
        assert json.loads((out / "config.json").read_text())["pruning"]["score"] == score
        weights[score] = lmforge.load(out, device="cpu").model.blocks[0].mlp.down_proj.weight
    assert not torch.equal(weights["l2"], weights["taylor"])


def test_cli_prune_structured_report_json(runs, char_data, tmp_path, capsys):
    code = main(
        [
            "prune",
            str(runs["llama"]),
            "--method",
            "structured",
            "--amount",
            "0.5",
            "--out",
            str(tmp_path / "s"),
            "--report",
            "--data",
            str(char_data),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    report = result["report"]
    assert result["score"] == "taylor" and result["heads"] == [4, 2]
    for side in ("original", "pruned"):
        assert set(report[side]) >= {
            "size_bytes",
            "parameters",
            "linear_sparsity",
            "tokens_per_s",
            "perplexity",
        }
    assert report["pruned"]["parameters"] < report["original"]["parameters"]


def test_cli_prune_sweep_writes_a_table_and_a_plot(runs, char_data, tmp_path, capsys):
    code = main(
        [
            "prune",
            str(runs["gpt2"]),
            "--method",
            "magnitude",
            "--amount",
            "0.5",
            "--out",
            str(tmp_path / "w"),
            "--report",
            "--data",
            str(char_data),
            "--amounts",
            "0.2,0.6",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["amount"] for r in result["rows"]] == [0.0, 0.2, 0.6]
    assert [round(r["linear_sparsity"], 3) for r in result["rows"]] == [0.0, 0.2, 0.6]
    assert (tmp_path / "w" / "perplexity.png").stat().st_size > 1000


def test_cli_prune_rejects_bad_input_with_one_error_line(runs, char_data, tmp_path, capsys):
    ngram = tmp_path / "ngram"
    lmforge.pretrain(char_data, ngram, arch="ngram", overrides={"model.order": 2}, progress=False)
    capsys.readouterr()
    cases = [
        (
            ["prune", str(ngram), "--method", "magnitude", "--amount", "0.5", "--out", str(tmp_path / "a")],
            "n-gram",
        ),
        (
            [
                "prune",
                str(runs["gpt2"]),
                "--method",
                "magnitude",
                "--amount",
                "1",
                "--out",
                str(tmp_path / "b"),
            ],
            "[0, 1)",
        ),
        (
            [
                "prune",
                str(runs["gpt2"]),
                "--method",
                "random",
                "--amount",
                "0.2",
                "--out",
                str(tmp_path / "c"),
            ],
            "unknown pruning method",
        ),
        (
            [
                "prune",
                str(runs["gpt2"]),
                "--method",
                "magnitude",
                "--amount",
                "0.2",
                "--out",
                str(tmp_path / "d"),
                "--report",
            ],
            "--data",
        ),
        (
            [
                "prune",
                str(runs["gpt2"]),
                "--method",
                "structured",
                "--amount",
                "0.2",
                "--out",
                str(tmp_path / "e"),
                "--score",
                "taylor",
            ],
            "--data",
        ),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0]
    assert not any((tmp_path / n).exists() for n in "abcde")
