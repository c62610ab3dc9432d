"""Drive the `lmforge` command as a user would: the lifecycle, Ctrl-C and resume, and every bad input."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.cli.main import build_parser, main

TINY = [
    "--model.n_layer",
    "2",
    "--model.n_head",
    "2",
    "--model.n_embd",
    "32",
    "--model.block_size",
    "32",
    "--train.batch_size",
    "8",
    "--train.eval_every",
    "20",
    "--train.eval_tokens",
    "2048",
    "--train.tensorboard",
    "false",
    "--optim.lr",
    "3e-3",
    "--optim.warmup_steps",
    "5",
]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_lifecycle_prepare_pretrain_evaluate_generate_resume(corpus_dir, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    code, out, _ = cli(
        capsys, "prepare", corpus_dir, "--out", data, "--tokenizer", "char", "--val-fraction", "0.2"
    )
    assert code == 0 and (data / "manifest.json").is_file()

    code, out, _ = cli(
        capsys, "pretrain", "--data", data, "--out", run, "--max-steps", "40", "--quiet", "--json", *TINY
    )
    assert code == 0
    trained = json.loads(out)
    assert trained["step"] == 40 and trained["val_loss"] < 2.5

    code, out, _ = cli(capsys, "evaluate", run, "--data", data, "--json", "--max-tokens", "2048")
    assert code == 0
    figures = json.loads(out)
    assert {"loss", "perplexity", "bits_per_byte"} <= set(figures)
    assert figures["loss"] == pytest.approx(
        trained["val_loss"], rel=1e-6
    )  # the same 2048 tokens as in training

    code, out, _ = cli(
        capsys, "generate", run / "best", "--prompt", "alice", "--max-new-tokens", "20", "--temperature", "0"
    )
    assert code == 0 and out.startswith("alice") and len(out.strip()) > len("alice")

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("alice\nbob\n")
    code, out, _ = cli(
        capsys, "generate", run, "--prompts-file", prompts, "--max-new-tokens", "10", "--json", "--seed", "1"
    )
    assert code == 0 and [r["prompt"] for r in json.loads(out)] == ["alice", "bob"]

    code, out, _ = cli(
        capsys, "pretrain", "--data", data, "--out", run, "--resume", "--max-steps", "60", "--quiet", "--json"
    )
    assert code == 0 and json.loads(out)["step"] == 60

    code, out, _ = cli(capsys, "info", run, "--json")
    info = json.loads(out)
    assert (
        code == 0 and info["params"] > 0 and info["flops_per_token"] > info["params"] and info["step"] == 60
    )


def test_info_on_presets(capsys):
    code, out, _ = cli(capsys, "info", "gpt2", "--json")
    assert code == 0 and json.loads(out)["params"] == 124_439_808
    code, out, _ = cli(capsys, "info", "tiny")
    assert code == 0 and "parameters" in out and "FLOPs per token" in out


VERBS = sorted(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_the_lifecycle_verbs_exist():
    assert {"quickstart", "prepare", "tokenizer", "pretrain", "evaluate", "generate", "info"} <= set(VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_explains_itself(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "examples:" in out and "lmforge " + verb in out


def test_python_dash_m_works(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "quickstart" in proc.stdout


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(char_data, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lmforge",
        "pretrain",
        "--data",
        str(char_data),
        "--out",
        str(run),
        "--max-steps",
        "100000",
        "--train.log_every",
        "1",
        *TINY,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not metrics.is_file() or len(metrics.read_text().splitlines()) < 5
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out
    latest = Path(os.path.realpath(run / "latest"))
    step = int(latest.name.split("-")[1])
    assert 5 <= step < 100000 and (latest / "train_state.pt").is_file()
    code = main(
        [
            "pretrain",
            "--data",
            str(char_data),
            "--out",
            str(run),
            "--resume",
            "--max-steps",
            str(step + 3),
            "--quiet",
        ]
    )
    assert code == 0 and os.path.realpath(run / "latest").endswith(f"ckpt-{step + 3:07d}")


@pytest.fixture(scope="module")
def trained(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("bad") / "run"
    assert (
        main(["pretrain", "--data", str(char_data), "--out", str(run), "--max-steps", "5", "--quiet", *TINY])
        == 0
    )
    return run


def test_bad_input_gets_one_error_line_and_exit_2(tmp_path, char_data, corpus_dir, trained, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02binary\x00" * 100)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café crème".encode("latin-1"))
    cases = [
        (["prepare", empty, "--out", tmp_path / "d1"], "empty"),
        (["prepare", binary, "--out", tmp_path / "d2"], "binary"),
        (["prepare", latin, "--out", tmp_path / "d3"], "--encoding"),
        (["prepare", latin, "--out", tmp_path / "d4", "--encoding", "klingon"], "encoding"),
        (
            ["pretrain", "--data", char_data, "--out", tmp_path / "r1", "--model.n_layers", "2"],
            "did you mean",
        ),
        (["pretrain", "--data", char_data, "--out", tmp_path / "r2", "--optim.lr", "-1e-3"], "optim.lr"),
        (
            ["pretrain", "--data", char_data, "--out", tmp_path / "r3", "--model.block_size", "100000"],
            "block_size",
        ),
        (["pretrain", "--data", tmp_path / "nodata", "--out", tmp_path / "r4"], "lmforge prepare"),
        (
            [
                "pretrain",
                "--data",
                char_data,
                "--out",
                tmp_path / "r5",
                "--max-steps",
                "50",
                "--optim.lr",
                "1e30",
                "--optim.warmup_steps",
                "0",
                "--optim.grad_clip",
                "0",
                "--train.log_every",
                "1",
                "--quiet",
            ],
            "nan",
        ),
        (["evaluate", tmp_path / "nockpt", "--data", char_data], "does not exist"),
        (["generate", trained, "--prompt", "alice " * 20], "context"),
        (["generate", trained, "--temperature", "-1"], "temperature"),
        (["info", "no-such-preset"], "neither a checkpoint"),
    ]
    for args, needle in cases:
        code, out, err = cli(capsys, *args)
        assert code == 2, (args, err)
        assert "--quiet" in args or out == "", (args, out)  # nothing half-printed on stdout either
        assert needle.lower() in one_error_line(err).lower(), (args, err)
    assert not (tmp_path / "r5" / "latest").exists()  # the NaN run left no checkpoint behind


def test_truncated_checkpoint_and_mismatched_tokenizer(tmp_path, char_data, corpus_dir, trained, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(os.path.realpath(trained / "latest"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = cli(capsys, "generate", broken, "--prompt", "a")
    assert code == 2 and "truncated or corrupted" in one_error_line(err)

    other = tmp_path / "bpe-data"
    assert (
        main(["prepare", str(corpus_dir), "--out", str(other), "--tokenizer", "bpe", "--vocab-size", "300"])
        == 0
    )
    capsys.readouterr()
    code, _, err = cli(capsys, "evaluate", trained, "--data", other)
    assert code == 2 and "different tokenizer" in one_error_line(err)
    code, _, err = cli(capsys, "pretrain", "--data", other, "--out", trained, "--resume")
    assert code == 2 and "tokenized differently" in one_error_line(err)
