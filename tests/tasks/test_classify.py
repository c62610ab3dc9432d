"""Fine-tuning classifiers: backbones (BERT, GPT, BiLSTM from scratch), pairs, multi-label, folds, reports, pipeline."""

import dataclasses
import json
import random

import pytest
import torch

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.cli.main import main
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model
from lmforge.tasks.classify.encoding import TextEncoder
from lmforge.tasks.classify.examples import Fields, read_examples
from lmforge.tokenizers import Tokenizer

GOOD = ["good", "great", "lovely", "superb", "fine"]
BAD = ["bad", "awful", "boring", "dull", "poor"]
FILL = ["the", "film", "was", "a", "plot", "really", "quite", "story", "acting", "and", "music", "it"]


def reviews(n: int, seed: int, fill: int = 5) -> list[tuple[str, str]]:
    """n (text, label) pairs: `fill` filler words and one word that decides the label, shuffled."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILL, fill) + [rng.choice(GOOD if label == "pos" else BAD)]
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentiment")
    for name, n, seed in (("train.tsv", 400, 0), ("dev.tsv", 100, 1)):
        rows = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in reviews(n, seed)]
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
    """A random BERT-style and a random GPT checkpoint with a word-piece tokenizer (stand-ins for pretrained ones)."""
    folder = tmp_path_factory.mktemp("backbones")
    texts = [t for t, _ in reviews(300, 5)]
    tok = Tokenizer.train("wordpiece", texts, vocab_size=200, min_frequency=1)
    out = {}
    for arch, cfg in (
        ("bert", dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0)),
        ("gpt", dict(n_layer=2, n_head=2, n_embd=32, block_size=32)),
    ):
        torch.manual_seed(0)
        model = build_model(arch, dict(cfg, vocab_size=tok.vocab_size))
        out[arch] = save_checkpoint(
            folder / arch, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)}
        )
    return out


FIELDS = Fields(text="sentence", label="label")


@pytest.mark.parametrize("backbone", ["bert", "gpt", "lstm"])
def test_each_backbone_learns_the_keyword_task(backbone, sentiment, tiny_backbones, tmp_path):
    model = str(tiny_backbones[backbone]) if backbone in tiny_backbones else backbone
    result = lmforge.finetune(
        "classify",
        model,
        sentiment / "train.tsv",
        tmp_path / "run",
        dev=sentiment / "dev.tsv",
        fields=FIELDS,
        epochs=4,
        batch_size=16,
        lr=3e-3,
        progress=False,
    )
    assert result.metrics["val_accuracy"] > 0.9, result.metrics
    clf = lmforge.pipeline("sentiment-analysis", model=tmp_path / "run" / "best")
    assert clf("the film was superb")["label"] == "pos"
    preds = clf(["an awful dull story", "great music"], top_k=None)
    assert [p[0]["label"] for p in preds] == ["neg", "pos"]
    assert abs(sum(p["score"] for p in preds[0]) - 1) < 1e-5


def test_cli_finetune_evaluate_report_predict(sentiment, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "finetune",
            "--task",
            "classify",
            "--model",
            "lstm",
            "--train",
            str(sentiment / "train.tsv"),
            "--dev",
            str(sentiment / "dev.tsv"),
            "--out",
            str(run),
            "--text-field",
            "sentence",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--quiet",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val_accuracy"] > 0.9 and summary["best"]
    # evaluate reads the fields the run was trained with; the report has the JSON, Markdown and plots
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--task",
                "classify",
                "--data",
                str(sentiment / "dev.tsv"),
                "--json",
                "--report",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert set(scores["per_class"]) == {"neg", "pos"} and sum(map(sum, scores["confusion_matrix"])) == 100
    assert 0.9 < scores["roc_auc"] <= 1.0
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "roc.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    texts = tmp_path / "texts.txt"
    texts.write_text("a superb story\n\nboring acting\n", encoding="utf-8")
    assert main(["predict", str(run), "--input", str(texts), "--json"]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [ln["prediction"]["label"] for ln in lines] == ["pos", "neg"]
    assert main(["generate", str(run), "--prompt", "x"]) == 2
    assert "fine-tuned classification model" in capsys.readouterr().err


def test_text_pairs_get_segments_and_are_cut_longest_first():
    tok = Tokenizer.train("char", ["abcdefghij xyz"])
    enc = TextEncoder(tok, "bert", max_length=10)
    ids, types = enc("abcdefghij", "xyz")
    assert len(ids) == 10 and ids[0] == tok.bos_id and ids.count(tok.eos_id) == 2
    assert tok.decode(ids) == "abcdxyz"  # the longer text lost its tail, the pair kept whole
    assert types == [0] * 6 + [1] * 4
    gpt_ids, _ = TextEncoder(tok, "gpt", max_length=10)("abc")
    assert gpt_ids[0] != tok.bos_id and gpt_ids[-1] == tok.eos_id


def test_nli_pairs_multi_label_and_cross_validation(tmp_path):
    rng = random.Random(0)
    rows = []
    for _ in range(
        400
    ):  # pairs whose label the hypothesis decides (the pair plumbing, not reasoning, is tested)
        premise, hypothesis = rng.choice(GOOD + BAD), rng.choice(GOOD + BAD)
        rows.append(
            {
                "premise": f"the film was {premise}",
                "hypothesis": f"it was {hypothesis}",
                "label": "entailment" if hypothesis in GOOD else "contradiction",
                "tags": ["kw"] + (["long"] if len(premise) > 4 else []),
            }
        )
    data = tmp_path / "nli.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    fields = Fields(text="premise", pair="hypothesis", label="label")
    summary = lmforge.finetune(
        "nli", "lstm", data, tmp_path / "cv", fields=fields, folds=2, epochs=5, batch_size=16, progress=False
    )
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2
    assert summary["mean"]["val_accuracy"] > 0.8 and (tmp_path / "cv" / "cv.json").is_file()
    multi = lmforge.finetune(
        "classify",
        "lstm",
        data,
        tmp_path / "multi",
        dev=data,
        multi_label=True,
        fields=Fields(text="premise", label="tags"),
        epochs=3,
        batch_size=16,
        progress=False,
    )
    assert multi.metrics["val_micro_f1"] > 0.9
    clf = lmforge.pipeline("text-classification", model=tmp_path / "multi")
    assert {p["label"] for p in clf("the film was superb")} == {"kw", "long"}
    with pytest.raises(ConfigError, match="pair"):
        lmforge.finetune("nli", "lstm", data, tmp_path / "x", fields=Fields(text="premise"), progress=False)


def test_bad_labelled_files(sentiment, tmp_path, capsys):
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nthe film was good\tmaybe\n", encoding="utf-8")
    with pytest.raises(DataError, match="maybe"):
        lmforge.finetune(
            "classify",
            "lstm",
            sentiment / "train.tsv",
            tmp_path / "r",
            dev=dev,
            fields=FIELDS,
            progress=False,
        )
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\nfine\tpos\n   \tneg\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.tsv:3 has an empty text"):
        read_examples(empty, FIELDS)
    with pytest.raises(DataError, match="no field 'text'"):
        read_examples(sentiment / "dev.tsv", Fields())
    code = main(
        [
            "finetune",
            "--task",
            "classify",
            "--model",
            "no-such-ckpt",
            "--train",
            str(sentiment / "train.tsv"),
            "--out",
            str(tmp_path / "r2"),
            "--text-field",
            "sentence",
        ]
    )
    assert code == 2 and "neither a checkpoint" in capsys.readouterr().err
    headerless = tmp_path / "agnews.tsv"
    headerless.write_text('It #39;s "quoted" text\tSci/Tech\nmarkets fall\tBusiness\n', encoding="utf-8")
    examples = read_examples(headerless, Fields(text="0", label="1"))
    assert examples[0].text == 'It #39;s "quoted" text' and examples[1].labels == ["Business"]


def test_lora_merge_is_exact_and_only_adapters_and_head_learn(sentiment, tiny_backbones, tmp_path):
    from lmforge.train.lora import LoRALinear, apply_lora, merge_lora, trainable_parameters

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))  # not a target
    net = torch.nn.ModuleDict(
        {"attn": torch.nn.ModuleDict({"qkv_proj": torch.nn.Linear(8, 8)}), "out": block}
    )
    assert apply_lora(net, r=2, alpha=4, dropout=0.0) == 1 and isinstance(net["attn"]["qkv_proj"], LoRALinear)
    assert trainable_parameters(net) == 2 * 8 + 8 * 2
    x = torch.randn(3, 8)
    torch.nn.init.normal_(net["attn"]["qkv_proj"].lora_B)  # as if trained
    merged = merge_lora(net)
    assert isinstance(merged["attn"]["qkv_proj"], torch.nn.Linear)
    assert torch.allclose(net["attn"]["qkv_proj"](x), merged["attn"]["qkv_proj"](x), atol=1e-6)

    base = lmforge.load(tiny_backbones["bert"]).model.state_dict()
    result = lmforge.finetune(
        "classify",
        str(tiny_backbones["bert"]),
        sentiment / "train.tsv",
        tmp_path / "run",
        dev=sentiment / "dev.tsv",
        fields=FIELDS,
        epochs=10,
        batch_size=16,
        # 3e-3, not 5e-3: at 5e-3 one seed in six collapses to chance (0.55); at 3e-3 seeds 0-5 reach 0.89-0.95.
        # The CI run that failed had the global RNG perturbed by an earlier test in the same worker.
        lr=3e-3,
        lora=True,
        lora_r=4,
        progress=False,
    )
    assert result.metrics["val_accuracy"] > 0.85, result.metrics
    tuned = lmforge.load(tmp_path / "run").model.backbone.state_dict()  # adapters merged: plain weight names
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.endswith(("qkv_proj.weight", "o_proj.weight")) for k in changed), changed


def test_chinese_text_end_to_end_with_a_character_model(tmp_path, capsys):
    rng = random.Random(3)
    good, bad, fill = (
        ["好看", "精彩", "感人"],
        ["无聊", "难看", "失望"],
        ["这部", "电影", "真的", "非常", "剧情", "演员"],
    )
    rows = ["text\tlabel"]
    for _ in range(300):
        label = rng.choice(["正面", "负面"])
        words = rng.sample(fill, 3) + [rng.choice(good if label == "正面" else bad)]
        rng.shuffle(words)
        rows.append("".join(words) + f"\t{label}")  # no spaces, as Chinese is written
    (tmp_path / "zh.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = lmforge.finetune(
        "classify",
        "lstm",
        tmp_path / "zh.tsv",
        tmp_path / "run",
        dev=tmp_path / "zh.tsv",
        epochs=4,
        batch_size=16,
        progress=False,
    )
    assert result.metrics["val_accuracy"] > 0.9
    clf = lmforge.pipeline("sentiment-analysis", model=tmp_path / "run")
    assert clf.lm.tokenizer.kind == "char"  # no spaces between Chinese words: characters are the units
    assert clf("这部电影真的非常精彩")["label"] == "正面"


def test_a_checkpoint_that_is_not_a_classifier_is_refused(tiny_backbones, tmp_path, capsys):
    with pytest.raises(ConfigError, match="not a fine-tuned classifier"):
        lmforge.pipeline("text-classification", model=tiny_backbones["gpt"])
    (tmp_path / "t.txt").write_text("hello\n", encoding="utf-8")
    assert main(["predict", str(tiny_backbones["bert"]), "--input", str(tmp_path / "t.txt")]) == 2
    assert "not a fine-tuned classifier" in capsys.readouterr().err


def test_task_models_refuse_generation_and_language_model_evaluation(sentiment, tmp_path, capsys):
    run = tmp_path / "run"
    lmforge.finetune(
        "classify", "lstm", sentiment / "train.tsv", run, fields=FIELDS, epochs=1, progress=False
    )
    assert main(["generate", str(run), "--prompt", "x"]) == 2
    assert "predict --task classify" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", str(sentiment / "dev.tsv")]) == 2
    assert "--task classify" in capsys.readouterr().err
    from lmforge.errors import CheckpointError

    with pytest.raises(
        CheckpointError, match="already holds checkpoints"
    ):  # a second run never overwrites one
        lmforge.finetune(
            "classify", "lstm", sentiment / "train.tsv", run, fields=FIELDS, epochs=1, progress=False
        )


def test_options_that_do_not_apply_to_a_task_are_refused_not_ignored(sentiment, tmp_path):
    with pytest.raises(ConfigError, match="--max-length does not apply to translate"):
        lmforge.finetune(
            "translate",
            "seq2seq-test",
            sentiment / "train.tsv",
            tmp_path / "r",
            max_length=64,
            progress=False,
        )
    with pytest.raises(ConfigError, match="not ner"):
        lmforge.finetune("ner", "lstm", sentiment / "train.tsv", tmp_path / "r", folds=3, progress=False)
    assert not (tmp_path / "r").exists()
