"""One run on two processes (torchrun, gloo on CPU): DDP, FSDP and tensor parallelism against one process, resume
across world sizes, a dead rank, and the refusals. Tiny models without dropout, so two ranks must compute the
single-process losses up to float reduction order."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import lmforge
from lmforge import checkpoint as ckpt
from lmforge.cli.main import main
from lmforge.extras import available
from lmforge.models.registry import build_model
from lmforge.tokenizers import Tokenizer
from tests.runs import losses

TINY = [
    *("--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "32"),
    *(
        "--model.dropout",
        "0",
        "--train.batch_size",
        "8",
        "--train.eval_every",
        "10",
        "--train.eval_tokens",
        "2048",
    ),
    *(
        "--train.log_every",
        "1",
        "--train.tensorboard",
        "false",
        "--optim.warmup_steps",
        "5",
        "--optim.lr",
        "3e-3",
    ),
]
STEPS = 20


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    out.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    return out


def torchrun(*args, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(
        [*cmd, "-m", "lmforge", *map(str, args)], env=env(), capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(per_rank_args: list[list[str]]) -> list[subprocess.Popen]:
    """Processes that join one group as torchrun would start them (to kill one, or give them different args)."""
    port, world = free_port(), len(per_rank_args)
    procs = []
    for rank, args in enumerate(per_rank_args):
        rank_env = env(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "lmforge", *map(str, args)],
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def rel_close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * abs(x) for x, y in zip(a, b))


def val_losses(run) -> list[float]:
    return [
        r["val_loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "val_loss" in r
    ]


def cut_to(run, step: int):
    """The run as it was when its checkpoint `step` was the latest (a stopped run)."""
    for s, path in ckpt.list_checkpoints(run):
        if s > step:
            shutil.rmtree(path)
    ckpt.point(run, "latest", run / f"ckpt-{step:07d}")


@pytest.fixture(scope="module")
def single(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(char_data),
                "--out",
                str(run),
                "--max-steps",
                str(STEPS),
                "--quiet",
                *TINY,
            ]
        )
        == 0
    )
    return run


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param(["--train.strategy", "ddp", "--train.tensorboard", "true"], id="ddp"),
        pytest.param(["--train.strategy", "fsdp"], id="fsdp"),
        pytest.param(["--train.tensor_parallel", "2"], id="tensor-parallel"),
    ],
)
def test_two_ranks_train_the_single_process_run(strategy, char_data, single, tmp_path):
    run = tmp_path / "run"
    done = torchrun("pretrain", "--data", char_data, "--out", run, "--max-steps", STEPS, *TINY, *strategy)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rel_close(losses(run), losses(single))  # one line per logged step: 20, not 40
    assert rel_close(val_losses(run), val_losses(single))
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [10, 20]
    assert done.stdout.count("trained 20 steps") == 1  # rank 0 speaks for the run
    if "ddp" in strategy and available("tensorboard"):
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    if "fsdp" in strategy:  # sharded optimizer state (torch.distributed.checkpoint) and whole weights
        assert (run / "ckpt-0000020" / "dcp" / ".metadata").is_file()
        # an ordinary checkpoint for every verb, without torchrun
        assert main(["evaluate", str(run), "--data", str(char_data), "--json"]) == 0
        assert main(["generate", str(run), "--prompt", "alice", "--max-new-tokens", "5"]) == 0
    # stopped at step 10 and resumed by one process: the same curve as the uninterrupted single-process run
    cut_to(run, 10)
    assert main(["pretrain", "--data", str(char_data), "--out", str(run), "--resume", "--quiet"]) == 0
    assert rel_close(losses(run), losses(single))
    a, b = lmforge.load(run).model.state_dict(), lmforge.load(single).model.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)


@pytest.mark.parametrize(
    "strategy",
    [["--train.strategy", "ddp"], ["--train.tensor_parallel", "2"]],
    ids=["ddp", "tensor-parallel"],
)
def test_a_one_process_run_resumes_on_two(strategy, char_data, single, tmp_path):
    # stopped at step 10, continued by two ranks (tensor parallel: the whole optimizer state is split), same curve
    run = tmp_path / "one-then-two"
    shutil.copytree(single, run, symlinks=True)
    cut_to(run, 10)
    done = torchrun("pretrain", "--data", char_data, "--out", run, "--resume", *strategy)
    assert done.returncode == 0, done.stderr[-3000:]
    assert rel_close(losses(run), losses(single))
    assert len(losses(run)) == STEPS


def test_a_classifier_fine_tunes_under_ddp(tmp_path):
    rows = ["sentence\tlabel"] + [
        f"{w} film {i % 7}\t{'pos' if w == 'good' else 'neg'}" for i, w in enumerate(["good", "bad"] * 24)
    ]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tok = Tokenizer.train("wordpiece", [r.split("\t")[0] for r in rows[1:]], vocab_size=60, min_frequency=1)
    torch.manual_seed(0)
    bert = build_model(
        "bert", dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.0, vocab_size=tok.vocab_size)
    )
    base = ckpt.save_checkpoint(
        tmp_path / "bert", bert, tok, {"arch": "bert", "model": dataclasses.asdict(bert.config)}
    )
    args = [
        "finetune",
        "--task",
        "classify",
        "--model",
        base,
        "--train",
        tmp_path / "train.tsv",
        "--text-field",
        "sentence",
    ]
    args += [
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--quiet",
        "--train.log_every",
        "1",
        "--model.dropout",
        "0",
    ]
    assert main([*map(str, args), "--out", str(tmp_path / "one")]) == 0
    done = torchrun(*args, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(losses(tmp_path / "two")) == 12
    assert rel_close(losses(tmp_path / "two"), losses(tmp_path / "one"))


def test_a_dead_rank_stops_the_other_with_one_line(char_data, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "--data", char_data, "--out", run, "--max-steps", "100000", "--quiet", *TINY]
    args += ["--train.eval_every", "5", "--train.dist_timeout", "60"]
    procs = start_ranks([args, args])
    try:
        deadline = time.time() + 120
        while ckpt.pointed(run, "latest") is None and time.time() < deadline:
            time.sleep(0.5)
        assert ckpt.pointed(run, "latest") is not None, procs[0].stderr.read() if procs[0].poll() else ""
        procs[1].send_signal(signal.SIGKILL)
        # a hang guard, not a speed figure: the survivor must not wait past train.dist_timeout (60 s) and more
        _, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode != 0
        assert "rank 1 of the run died or did not answer" in err and "Traceback" not in err
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert lmforge.load(run).model is not None  # latest is whole


def test_refusals(char_data, tmp_path, monkeypatch, capsys):
    # the global batch must split evenly over the ranks
    done = torchrun(
        "pretrain", "--data", char_data, "--out", tmp_path / "odd", *TINY, "--train.batch_size", "7"
    )
    assert done.returncode != 0 and "must divide evenly over the 2 data-parallel processes" in done.stderr
    # ranks given different data refuse, every one of them
    other = tmp_path / "other-data"
    shutil.copytree(char_data, other)
    procs = start_ranks(
        [["pretrain", "--data", data, "--out", tmp_path / "mixed", *TINY] for data in (char_data, other)]
    )
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode != 0 and "every process must run the same command, code and data" in err, err
    # a verb that would only run as copies, and a model fitted in one pass rather than by the loop
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "cannot run on several processes" in capsys.readouterr().err
    assert (
        main(["pretrain", "--data", str(char_data), "--out", str(tmp_path / "ngram"), "--arch", "ngram"]) == 2
    )
    assert "is fitted in one pass" in capsys.readouterr().err and not (tmp_path / "ngram").exists()
