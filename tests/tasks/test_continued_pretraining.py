"""Continued pretraining: `pretrain --init-from CKPT` (own runs, imported GPT-2 / Llama, BERT MLM, seq2seq, pruned,
quantized refused), `prepare --tokenizer RUN`, `finetune --task lm` on raw text, `--seed`, and `--resume` that
accepts a run's own repeated flags."""

import json
import warnings

import pytest
import torch

import lmforge
from lmforge import checkpoint as ckpt
from lmforge.cli.main import main
from lmforge.data.prepare import prepare
from lmforge.errors import CheckpointError, ConfigError, TokenizerError
from lmforge.tokenizers import Tokenizer
from tests.conftest import make_text
from tests.runs import losses
from tests.train.test_seq2seq_pretrain import S2S

# The seq2seq tests' small shapes (2 layers x 32, block 32, batch 16, no dropout), for every architecture here; one
# torch thread, as under xdist: two busy-waiting OpenMP threads on a shared 2-core machine ran ten times slower.
SMALL = {**S2S, "train.eval_every": 100, "train.threads": 1, "optim.warmup_steps": 2}
# Training settings only: what a continued run may set (its model is the checkpoint's).
TRAIN = {**{k: v for k, v in SMALL.items() if not k.startswith("model.")}, "optim.warmup_steps": 0}
BASE_STEPS = {"gpt": 60, "bert": 120, "seq2seq": 100}


@pytest.fixture(scope="module")
def base_runs(char_data, tmp_path_factory):
    """A briefly pretrained model of each architecture, on the shared character-level data."""
    root = tmp_path_factory.mktemp("base")
    for arch, steps in BASE_STEPS.items():
        lmforge.pretrain(char_data, root / arch, arch=arch, overrides=SMALL, max_steps=steps, progress=False)
    return root


def config_of(run):
    return json.loads((ckpt.resolve_checkpoint(run) / "config.json").read_text())


@pytest.mark.parametrize("arch", ["gpt", "bert", "seq2seq"])
def test_a_continued_run_starts_from_the_checkpoints_weights(arch, base_runs, char_data, tmp_path):
    base = base_runs / arch
    cont = lmforge.pretrain(
        char_data, tmp_path / "cont", init_from=base, overrides=TRAIN, max_steps=3, progress=False
    )
    lmforge.pretrain(
        char_data, tmp_path / "fresh", arch=arch, overrides={**SMALL, **TRAIN}, max_steps=3, progress=False
    )
    first, fresh = losses(tmp_path / "cont")[0], losses(tmp_path / "fresh")[0]
    trained = losses(base)[-10:]
    # Step 1's loss is the checkpoint's (no update yet): where its run ended, far below a fresh initialisation.
    assert first < fresh - 0.5
    assert abs(first - sum(trained) / len(trained)) < 0.3
    assert cont.step == 3  # a fresh schedule: its own steps from 0
    config = config_of(tmp_path / "cont")
    assert config["arch"] == arch and config["model"] == config_of(base)["model"]
    assert config["init_from"]["path"] == str(ckpt.resolve_checkpoint(base))
    assert config["init_from"]["step"] == BASE_STEPS[arch]
    card = (ckpt.resolve_checkpoint(tmp_path / "cont") / "README.md").read_text()
    assert f"initialised from `{ckpt.resolve_checkpoint(base)}`" in card


def save_hf(kind, tokenizer, folder):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64
        )
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    return folder


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_continued_pretraining_of_an_imported_hf_model(kind, corpus_dir, tmp_path):
    from lmforge.export.hf import import_hf

    tokenizer = Tokenizer.train("bpe", make_text(), vocab_size=300)
    hf = save_hf(kind, tokenizer, tmp_path / "hf")
    with pytest.raises(CheckpointError, match="import it first with `lmforge import-hf"):
        lmforge.pretrain(tmp_path / "nodata", tmp_path / "x", init_from=hf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imported = import_hf(hf, tmp_path / "ours")
    data = tmp_path / "data"
    assert main(["prepare", str(corpus_dir), "--out", str(data), "--tokenizer", str(imported)]) == 0
    # A shorter training window than the 64 positions it has; a near-zero learning rate leaves the weights as
    # they were imported (GPT-2's learned positions cut to the window).
    window = {**TRAIN, "model.block_size": 32, "optim.lr": 1e-12, "optim.warmup_steps": 0}
    lmforge.pretrain(
        data, tmp_path / "run", init_from=imported, overrides=window, max_steps=2, progress=False
    )
    before = lmforge.load(imported).model.state_dict()
    after = lmforge.load(tmp_path / "run").model.state_dict()
    for key, value in after.items():
        start = before[key][:32] if key == "pos_emb.weight" else before[key]
        assert torch.allclose(value, start, atol=1e-6), key
    config = config_of(tmp_path / "run")
    assert (
        config["model"]["block_size"] == 32
        and config["model"]["position"] == config_of(imported)["model"]["position"]
    )
    assert config["init_from"]["arch"] == "gpt"
    # A longer window than the learned positions cannot be made up.
    if kind == "gpt2":
        with pytest.raises(ConfigError, match="longer than the 64 positions"):
            lmforge.pretrain(data, tmp_path / "long", init_from=imported, overrides={"model.block_size": 128})


def test_a_tokenizer_mismatch_is_one_error_naming_both(base_runs, corpus_dir, tmp_path):
    bpe = tmp_path / "bpe-data"
    prepare([str(corpus_dir)], str(bpe), tokenizer="bpe", vocab_size=300, progress=False)
    with pytest.raises(TokenizerError) as err:
        lmforge.pretrain(bpe, tmp_path / "run", init_from=base_runs / "gpt", progress=False)
    message = str(err.value)
    assert str(bpe) in message and str(ckpt.resolve_checkpoint(base_runs / "gpt")) in message
    assert "--tokenizer" in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_prepare_takes_a_run_directorys_tokenizer(base_runs, corpus_dir, tmp_path):
    data = tmp_path / "data"
    prepare([str(corpus_dir)], str(data), tokenizer=str(base_runs / "gpt"), progress=False)
    mine = Tokenizer.load(data / "tokenizer.json").sha256()
    assert mine == config_of(base_runs / "gpt")["tokenizer"]["sha256"]


def test_flags_that_change_the_architecture_are_refused(base_runs, char_data, tmp_path):
    base = base_runs / "gpt"
    for overrides, word in (
        ({"model.n_layer": 3}, "model.n_layer 3"),
        ({"model.n_embd": 64}, "model.n_embd 64"),
    ):
        with pytest.raises(ConfigError, match=word) as err:
            lmforge.pretrain(char_data, tmp_path / "run", init_from=base, overrides=overrides)
        assert "would change the architecture" in str(err.value) and "(model." in str(err.value)
    with pytest.raises(ConfigError, match="--preset"):
        lmforge.pretrain(char_data, tmp_path / "run", init_from=base, preset="tiny")
    with pytest.raises(ConfigError, match="--arch bert differs"):
        lmforge.pretrain(char_data, tmp_path / "run", init_from=base, arch="bert")
    command = ["pretrain", "--data", str(char_data), "--out", str(tmp_path / "run"), "--init-from", str(base)]
    assert main([*command, "--model.n_head", "4"]) != 0
    # The model's training keys and repeated values apply.
    same = {"model.n_layer": 2, "model.dropout": 0.1, **TRAIN}
    lmforge.pretrain(char_data, tmp_path / "ok", init_from=base, overrides=same, max_steps=1, progress=False)
    assert config_of(tmp_path / "ok")["model"]["dropout"] == 0.1


def test_pruned_checkpoints_continue_and_quantized_ones_are_refused(base_runs, char_data, tmp_path):
    from lmforge.compress.prune import prune_checkpoint
    from lmforge.compress.quantize import quantize_checkpoint

    pruned = prune_checkpoint(base_runs / "gpt", tmp_path / "pruned", "structured", 0.5)
    lmforge.pretrain(
        char_data, tmp_path / "run", init_from=pruned, overrides=TRAIN, max_steps=2, progress=False
    )
    config = config_of(tmp_path / "run")
    assert config["model"] == config_of(pruned)["model"] and config["init_from"]["pruning"] == "structured"
    quantized = quantize_checkpoint(base_runs / "gpt", tmp_path / "q", "int8-weight")
    with pytest.raises(ConfigError, match="quantized .*float checkpoint it was made from"):
        lmforge.pretrain(char_data, tmp_path / "qrun", init_from=quantized)


def flags(overrides: dict) -> list[str]:
    return sum(([f"--{k}", str(v)] for k, v in overrides.items()), [])


def test_finetune_lm_on_raw_text_files(base_runs, tmp_path, capsys):
    files = []
    for i, doc in enumerate(make_text(n_docs=6, seed=3)):
        files.append(tmp_path / f"part{i}.txt")
        files[-1].write_text(doc, encoding="utf-8")
    out = tmp_path / "lm"
    model = ["finetune", "--task", "lm", "--model", str(base_runs / "gpt")]
    rest = ["--dev", str(files[5]), "--out", str(out), *"--batch-size 4 --lr 1e-3 --seed 3 --quiet".split()]
    rest += ["--train.threads", "1"]
    train = ["--train", *map(str, files[:5])]
    assert main([*model, *train, *rest, "--epochs", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    config = config_of(out)
    assert config["init_from"]["path"] == str(ckpt.resolve_checkpoint(base_runs / "gpt"))
    assert config["run"]["train"]["seed"] == 3 and config["run"]["optim"]["lr"] == 1e-3
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == config_of(base_runs / "gpt")["tokenizer"]["sha256"]
    assert manifest["splits"]["val"]["documents"] == 1  # the --dev file
    assert result["val_loss"] < losses(base_runs / "gpt")[0] - 0.5
    # The same command with --resume (and more epochs): accepted; with other files: refused.
    assert main([*model, *train, *rest, "--epochs", "3", "--resume"]) == 0
    assert config_of(out)["step"] > config["step"]
    assert main([*model, "--train", str(files[0]), *rest, "--epochs", "3", "--resume"]) != 0
    assert "resume with the same files" in capsys.readouterr().err
    # The masked-LM and span-corruption checkpoints continue on their own objectives (one file: its tail is val),
    # below a uniform guess over the 37 characters (3.61) after one epoch at the default lr.
    for arch in ("bert", "seq2seq"):
        one = lmforge.finetune(
            "lm", base_runs / arch, files[0], tmp_path / arch, epochs=1, batch_size=4, progress=False
        )
        assert one.metrics["val_loss"] < 3.5 and config_of(tmp_path / arch)["arch"] == arch
    # Several --train files are for --task lm only.
    assert main(["finetune", *"--task classify --model lstm --train a b --out x".split()]) != 0
    assert "several are for --task lm" in capsys.readouterr().err


def test_seed_flag_of_pretrain_and_distill(char_data, base_runs, tmp_path):
    run, student = tmp_path / "run", tmp_path / "student"
    common = [
        "--data",
        str(char_data),
        "--max-steps",
        "2",
        "--quiet",
        *flags({**SMALL, "optim.warmup_steps": 0}),
    ]
    assert main(["pretrain", "--out", str(run), "--preset", "test", "--seed", "7", *common]) == 0
    assert config_of(run)["run"]["train"]["seed"] == 7
    teacher = ["--teacher", str(base_runs / "gpt"), "--student-preset", "test"]
    assert main(["distill", *teacher, "--out", str(student), "--seed", "11", *common]) == 0
    assert config_of(student)["run"]["train"]["seed"] == 11


def test_resume_accepts_a_runs_own_repeated_flags_and_refuses_changes(char_data, tmp_path, capsys):
    run = tmp_path / "run"
    command = ["pretrain", "--data", str(char_data), "--out", str(run), "--preset", "test", "--quiet"]
    command += flags({**SMALL, "optim.warmup_steps": 0})
    assert main([*command, "--max-steps", "4"]) == 0
    # The interrupted command again, plus --resume (and more steps): accepted.
    assert main([*command, "--max-steps", "6", "--resume"]) == 0
    assert config_of(run)["step"] == 6
    assert main([*command, "--max-steps", "8", "--resume", "--model.n_layer", "3"]) != 0
    err = capsys.readouterr().err
    assert "model.n_layer 2, this command asks for 3" in err and len(err.strip().splitlines()) == 1
    assert main([*command, "--preset", "tiny", "--resume"]) != 0
    assert "--preset test, this command asks for tiny" in capsys.readouterr().err
    # A continued run resumes with its own --init-from repeated, and refuses another one.
    cont = tmp_path / "cont"
    train = ["--data", str(char_data), "--out", str(cont), "--init-from", str(run), "--quiet"]
    train += flags(TRAIN)
    assert main(["pretrain", *train, "--max-steps", "2"]) == 0
    assert main(["pretrain", *train, "--max-steps", "3", "--resume"]) == 0
    assert config_of(cont)["step"] == 3 and config_of(cont)["init_from"]["path"].startswith(str(run))
    assert main(["pretrain", *train[:5], str(run / "ckpt-0000004"), *train[6:], "--resume"]) != 0
    assert "was started from" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="was not started from a checkpoint"):
        lmforge.pretrain(char_data, run, init_from=cont, resume=True, progress=False)


def test_seed_flag_of_prune_recovery_and_compare(base_runs, char_data, tmp_path):
    from lmforge.compress.prune import prune_checkpoint

    weights = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = prune_checkpoint(
            base_runs / "gpt", tmp_path / name, "magnitude", 0.3, data=char_data, recover_steps=2, seed=seed
        )
        weights[name] = lmforge.load(out).model.state_dict()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
    report = tmp_path / "compare"
    args = [
        "compare",
        "--data",
        str(char_data),
        "--archs",
        "gpt",
        "--budget-tokens",
        "3000",
        "--out",
        str(report),
    ]
    assert (
        main(
            [
                *args,
                "--seed",
                "9",
                "--quiet",
                "--train.threads",
                "1",
                "--model.block_size",
                "32",
                "--optim.warmup_steps",
                "0",
            ]
        )
        == 0
    )
    assert config_of(report / "runs" / "gpt")["run"]["train"]["seed"] == 9
