"""Outputs and failures of every writing verb, driven through `lmforge ...` in-process (lmforge.outputs' rule).

Every case runs a command that must fail: it exits 2 with exactly one `error:` line on stderr that names the path
or the cause, prints no traceback, and leaves every file it was given, and every folder around, as it was (no
deleted data, no half-written output, no `.tmp-`/`.old-` leftovers). A disk that fills up is simulated by making
the writes under one folder fail with ENOSPC, in Python and in the native writers (safetensors, torch.save) as
they fail on a real full disk; a folder that cannot be written is a read-only one (chmod 0o500) or, where the
tests run as root and permissions do not apply, a path under a regular file.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import lmforge
from lmforge import checkpoint as ckpt
from lmforge.cli.main import main
from lmforge.errors import CheckpointError
from tests.e2e.test_cli import TINY

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---- the shared inputs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(char_data, tmp_path_factory):
    """Inputs the cases read (never write): a prepared data directory, a run, an n-gram run with its ARPA file, a
    Hugging Face folder and a fine-tuned classifier with a labelled file."""
    from lmforge.tasks.classify.examples import Fields

    folder = tmp_path_factory.mktemp("inputs")
    run = folder / "run"
    assert (
        main(["pretrain", "--data", str(char_data), "--out", str(run), "--max-steps", "4", "--quiet", *TINY])
        == 0
    )
    ngram = folder / "ngram"
    assert (
        main(["pretrain", "--data", str(char_data), "--out", str(ngram), "--arch", "ngram", "--quiet"]) == 0
    )
    assert main(["export-arpa", str(ngram), str(folder / "model.arpa")]) == 0
    assert main(["export-hf", str(run), str(folder / "hf")]) == 0
    rows = ["text\tlabel"] + [
        f"{w} film {i}\t{'pos' if w == 'good' else 'neg'}" for i in range(20) for w in ("good", "bad")
    ]
    (folder / "labelled.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    clf = folder / "clf"
    lmforge.finetune(
        "classify",
        "lstm",
        folder / "labelled.tsv",
        clf,
        fields=Fields(),
        epochs=1,
        batch_size=16,
        progress=False,
    )
    return {
        "data": char_data,
        "run": run,
        "ckpt": ckpt.resolve_checkpoint(run),
        "ngram": ngram,
        "arpa": folder / "model.arpa",
        "hf": folder / "hf",
        "clf": clf,
        "labelled": folder / "labelled.tsv",
        "folder": folder,
    }


def snapshot(*folders: Path) -> dict:
    """Every entry under the folders (hidden ones included): a file's digest, a link's target, or a folder."""
    state = {}
    for top in folders:
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                p = Path(root) / name
                if p.is_symlink():
                    state[str(p)] = "-> " + os.readlink(p)
                elif p.is_file():
                    state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                else:
                    state[str(p)] = "dir"
    return state


def user_folder(path: Path) -> Path:
    """A folder of the user's that no command may touch."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n", encoding="utf-8")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01" * 100)
    return path


def unwritable(tmp: Path) -> tuple[Path, str]:
    """A path whose folder cannot be written, and what the error names: a read-only folder, or (as root, where
    permissions do not apply) a path under a regular file."""
    if ROOT:
        (tmp / "a-file").write_text("x", encoding="utf-8")
        return tmp / "a-file" / "out", "is a file, not a folder"
    ro = tmp / "read-only"
    ro.mkdir()
    ro.chmod(0o500)
    return ro / "out", "permission denied"


class FullFile:
    """A file on a full disk: opening works, every write fails with ENOSPC (as os.write does)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(folder, name=None): from now on, writes under `folder` (of files called `name`, if given) fail as
    on a full disk, in Python (open / Path.write_text), safetensors (its Rust writer reports "No space left on
    device (os error 28)") and torch.save (which, given a path, reports only "unexpected pos")."""

    def install(folder: Path, name: str | None = None) -> None:
        folder = folder.resolve()

        def hit(file) -> bool:
            if isinstance(file, int):
                return False
            p = Path(os.fspath(file)).resolve()
            return (folder == p or folder in p.parents) and (name is None or p.name == name)

        real_open, real_save_file, real_torch_save = builtins.open, ckpt.save_file, torch.save

        def open_(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            return FullFile(fh) if any(c in mode for c in "wax+") and hit(file) else fh

        def save_file(tensors, filename, *args, **kwargs):
            if hit(filename):
                raise SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )
            return real_save_file(tensors, filename, *args, **kwargs)

        def torch_save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and hit(f):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1216 vs 1110")
            return real_torch_save(obj, f, *args, **kwargs)  # a file object: its writes fail, if on the disk

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(ckpt, "save_file", save_file)
        monkeypatch.setattr(torch, "save", torch_save)

    return install


def refused(capsys, argv: list, *needles: str, watch: tuple = ()) -> str:
    """Run the command; it must exit 2 with one `error:` line holding the needles, and change nothing."""
    before = snapshot(*watch)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    assert snapshot(*watch) == before, "the command changed files it must not touch"
    leftovers = [p for top in watch for p in Path(top).rglob("*") if p.name.startswith((".tmp-", ".old-"))]
    assert not leftovers and not [p for top in watch for p in Path(top).glob("*.tmp-*")], leftovers
    return lines[0]


# ---- 1. no command replaces what it did not write ------------------------------------------------------------


def test_quantize_and_prune_refuse_a_folder_of_the_users(work, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    watch = (tmp_path, work["folder"])
    for verb in (
        ["quantize", "--method", "int8-weight"],
        ["prune", "--method", "magnitude", "--amount", "0.5"],
    ):
        argv = [verb[0], work["ckpt"], *verb[1:], "--out", mine]
        refused(capsys, argv, str(mine), "not empty", "--overwrite", watch=watch)


def test_quantize_refuses_the_run_holding_its_input_even_with_overwrite(work, tmp_path, capsys):
    for extra in ([], ["--overwrite"]):
        argv = ["quantize", work["run"] / "best", "--method", "int8-weight", "--out", work["run"], *extra]
        refused(capsys, argv, str(work["run"]), "input", watch=(work["folder"],))


def test_quantize_refuses_an_existing_file(work, tmp_path, capsys):
    (tmp_path / "model").write_text("mine\n", encoding="utf-8")  # was renamed to .old-model-PID, exit 0
    for extra in ([], ["--overwrite"]):  # a folder never replaces a file
        argv = ["quantize", work["ckpt"], "--method", "int8-weight", "--out", tmp_path / "model", *extra]
        refused(capsys, argv, str(tmp_path / "model"), "existing file", watch=(tmp_path, work["folder"]))


def test_overwrite_replaces_an_earlier_output_only_once_the_new_one_is_whole(work, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(work["ckpt"]), "--method", "int8-weight", "--out", str(out)]) == 0
    first = snapshot(out)
    argv = ["quantize", work["ckpt"], "--method", "int4-weight", "--out", out]
    refused(capsys, argv, "--overwrite", watch=(tmp_path,))
    assert main([str(a) for a in argv] + ["--overwrite"]) == 0
    capsys.readouterr()
    assert snapshot(out) != first and ckpt.read_config(out)["quantization"]["method"] == "int4-weight"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no .old- / .tmp- left


def test_training_verbs_refuse_a_folder_of_the_users(work, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    watch = (tmp_path, work["folder"])
    refused(
        capsys,
        ["pretrain", "--data", work["data"], "--out", mine, "--max-steps", "2", "--quiet", *TINY],
        "not empty",
        watch=watch,
    )
    argv = [
        "finetune",
        "--task",
        "classify",
        "--model",
        "lstm",
        "--train",
        work["labelled"],
        "--out",
        mine,
        "--quiet",
    ]
    refused(capsys, argv, "not empty", watch=watch)
    argv = [
        "compare",
        "--data",
        work["data"],
        "--archs",
        "ngram",
        "--budget-tokens",
        "1000",
        "--out",
        mine,
        "--quiet",
    ]
    refused(capsys, argv, "not empty", watch=watch)


def test_file_outputs_are_not_replaced_silently(work, tmp_path, capsys):
    (tmp_path / "mine.arpa").write_text("my model\n", encoding="utf-8")
    watch = (tmp_path, work["folder"])
    refused(capsys, ["export-arpa", work["ngram"], tmp_path / "mine.arpa"], "already exists", watch=watch)
    # A tokenizer trained "into" a data directory would replace the one its shards were encoded with.
    data = tmp_path / "data"
    assert (
        main(
            [
                "prepare",
                str(work["labelled"]),
                "--out",
                str(data),
                "--tokenizer",
                "char",
                "--doc-split",
                "line",
            ]
        )
        == 0
    )
    capsys.readouterr()
    argv = ["tokenizer", "train", work["labelled"], "--kind", "char", "--out", data]
    refused(capsys, argv, "tokenizer.json", "already exists", watch=watch)


def test_an_evaluation_report_does_not_mix_into_a_folder_of_the_users(work, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    argv = ["evaluate", work["clf"], "--task", "classify", "--data", work["labelled"], "--report", mine]
    refused(capsys, argv, "not empty", watch=(tmp_path, work["folder"]))
    assert main([str(a) for a in argv[:-1]] + [str(tmp_path / "report")]) == 0  # a new folder is fine
    capsys.readouterr()
    assert (tmp_path / "report" / "metrics.json").is_file()


def test_overwrite_never_deletes_an_input(work, tmp_path, capsys):
    watch = (tmp_path, work["folder"])
    refused(capsys, ["import-hf", work["hf"], "--out", work["hf"], "--overwrite"], "input", watch=watch)
    refused(capsys, ["export-hf", work["run"], work["run"], "--overwrite"], "input", watch=watch)
    refused(
        capsys, ["import-arpa", work["arpa"], "--out", work["folder"], "--overwrite"], "input", watch=watch
    )


def test_save_pretrained_refuses_a_folder_of_the_users(work, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    lm = lmforge.load(work["run"])
    with pytest.raises(CheckpointError, match="not empty"):
        lm.save_pretrained(mine)
    with pytest.raises(CheckpointError, match="input"):
        lm.save_pretrained(work["run"], overwrite=True)
    assert snapshot(tmp_path) == before
    assert lm.save_pretrained(tmp_path / "copy").is_dir()


# ---- 5. one line, not a traceback, and nothing half-written ---------------------------------------------------


@pytest.mark.parametrize("verb", ["prepare", "pretrain", "quantize", "export-hf"])
def test_an_out_that_cannot_be_written(verb, work, tmp_path, capsys):
    out, cause = unwritable(tmp_path)
    argv = {
        "prepare": ["prepare", work["labelled"], "--out", out, "--tokenizer", "char"],
        "pretrain": ["pretrain", "--data", work["data"], "--out", out, "--max-steps", "2", "--quiet", *TINY],
        "quantize": ["quantize", work["ckpt"], "--method", "int8-weight", "--out", out],
        "export-hf": ["export-hf", work["ckpt"], out],
    }[verb]
    try:
        refused(capsys, argv, str(out), cause, watch=(tmp_path, work["folder"]))
    finally:
        out.parent.chmod(0o700)


@pytest.mark.parametrize("verb", ["pretrain", "finetune"])
def test_an_out_that_is_an_existing_file(verb, work, tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("mine\n", encoding="utf-8")
    argv = {
        "pretrain": ["pretrain", "--data", work["data"], "--out", out, "--max-steps", "2", "--quiet", *TINY],
        "finetune": [
            "finetune",
            "--task",
            "classify",
            "--model",
            "lstm",
            "--train",
            work["labelled"],
            "--out",
            out,
            "--quiet",
        ],
    }[verb]
    refused(capsys, argv, str(out), "existing file", watch=(tmp_path, work["folder"]))


def test_an_out_that_is_a_folder_where_a_file_goes(work, tmp_path, capsys):
    mine = user_folder(tmp_path / "model.arpa")
    refused(
        capsys,
        ["export-arpa", work["ngram"], mine],
        str(mine),
        "is a folder",
        watch=(tmp_path, work["folder"]),
    )


def test_a_corrupted_config_json(work, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in work["ckpt"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    config = json.loads((broken / "config.json").read_text(encoding="utf-8"))
    config["model"]["n_layer"] = "two"
    (broken / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for argv in (
        ["generate", broken, "--prompt", "a"],
        ["info", broken],
        ["quantize", broken, "--method", "int8-weight", "--out", tmp_path / "q"],
    ):
        refused(capsys, argv, "config.json", "n_layer", watch=(tmp_path,))


def test_prompts_that_are_not_utf8(work, tmp_path, capsys):
    prompt = b"\xff\xfe alice".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    refused(capsys, ["generate", work["run"], "--prompt", prompt], "--prompt", "utf-8", "0xff")
    (tmp_path / "prompts.bin").write_bytes(bytes(range(128, 256)) * 4)
    refused(
        capsys, ["generate", work["run"], "--prompts-file", tmp_path / "prompts.bin"], "prompts.bin", "utf-8"
    )


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--seed", str(2**64)], "seed"),
        (["--temperature", "nan"], "temperature"),
        (["--repetition-penalty", "1e-300"], "repetition_penalty"),
    ],
)
def test_sampling_values_torch_cannot_take(flags, named, work, capsys):
    refused(capsys, ["generate", work["run"], "--prompt", "a", *flags], named)


def test_a_batch_that_cannot_fit_leaves_no_run_folder(work, tmp_path, capsys):
    # On the code before the check this allocated 1e9 x 32 tokens: the process was killed (exit 137), leaving
    # RUN/config.yaml. Now the batch is refused before anything is written.
    argv = [
        "pretrain",
        "--data",
        work["data"],
        "--out",
        tmp_path / "run",
        "--quiet",
        *TINY,
        "--train.batch_size",
        "1e9",
    ]
    refused(capsys, argv, "batch_size", "GiB", watch=(tmp_path,))
    assert not (tmp_path / "run").exists()


def test_a_vocabulary_too_large_to_allocate(work, tmp_path, capsys):
    # Before the bound, the native BPE trainer aborted the process (exit 134), leaving OUT.tmp-PID/ behind.
    argv = ["prepare", work["labelled"], "--out", tmp_path / "data", "--vocab-size", "1000000000000"]
    refused(capsys, argv, "vocab-size", watch=(tmp_path,))
    argv = [
        "tokenizer",
        "train",
        work["labelled"],
        "--out",
        tmp_path / "tok",
        "--vocab-size",
        "1000000000000",
    ]
    refused(capsys, argv, "vocab-size", watch=(tmp_path,))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_prepare(work, tmp_path, capsys, full_disk):
    disk = tmp_path / "disk"
    disk.mkdir()
    full_disk(disk)
    argv = ["prepare", work["labelled"], "--out", disk / "data", "--tokenizer", "char"]
    refused(capsys, argv, str(disk / "data"), "no space left", watch=(tmp_path, work["folder"]))
    assert list(disk.iterdir()) == []


def test_a_full_disk_when_pretrain_saves_its_first_checkpoint(work, tmp_path, capsys, full_disk):
    full_disk(tmp_path, name="train_state.pt")  # the disk fills up while the train state is written
    run = tmp_path / "run"
    argv = ["pretrain", "--data", work["data"], "--out", run, "--max-steps", "3", "--quiet", *TINY]
    refused(capsys, argv, str(run / "ckpt-0000003" / "train_state.pt"), "no space left", watch=(tmp_path,))
    assert not run.exists()  # the run never got a checkpoint: nothing of it is left


def test_a_full_disk_from_the_start_of_pretrain(work, tmp_path, capsys, full_disk):
    full_disk(tmp_path)
    argv = [
        "pretrain",
        "--data",
        work["data"],
        "--out",
        tmp_path / "run",
        "--max-steps",
        "3",
        "--quiet",
        *TINY,
    ]
    refused(capsys, argv, str(tmp_path / "run"), "no space left", watch=(tmp_path,))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_keeps_a_resumed_runs_checkpoints(work, tmp_path, capsys, full_disk):
    run = tmp_path / "run"
    assert (
        main(
            ["pretrain", "--data", str(work["data"]), "--out", str(run), "--max-steps", "2", "--quiet", *TINY]
        )
        == 0
    )
    before = ckpt.pointed(run, "latest")
    full_disk(run, name="train_state.pt")
    code = main(
        [
            "pretrain",
            "--data",
            str(work["data"]),
            "--out",
            str(run),
            "--resume",
            "--max-steps",
            "4",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no space left" in err and "Traceback" not in err
    assert ckpt.pointed(run, "latest") == before and not (run / "ckpt-0000004").exists()
    assert not [p for p in run.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_a_full_disk_in_quantize(work, tmp_path, capsys, full_disk):
    full_disk(tmp_path)
    argv = ["quantize", work["ckpt"], "--method", "int8-weight", "--out", tmp_path / "q"]
    refused(
        capsys,
        argv,
        str(tmp_path / "q" / "model.safetensors"),
        "no space left",
        watch=(tmp_path, work["folder"]),
    )
    assert list(tmp_path.iterdir()) == []


def test_a_failed_native_allocation(work, tmp_path, capsys, monkeypatch):
    from lmforge.compress import quantize

    def out_of_memory(*args, **kwargs):  # what torch raises when the CPU allocator is refused
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
            "to allocate 10000000000000 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(quantize, "quantize_model", out_of_memory)
    argv = ["quantize", work["ckpt"], "--method", "int8-weight", "--out", tmp_path / "q"]
    refused(capsys, argv, "out of memory", "9,313.2 GiB", watch=(tmp_path, work["folder"]))
    assert list(tmp_path.iterdir()) == []
