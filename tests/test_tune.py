"""lmforge tune: Optuna studies whose trials are tiny pretrain runs (a few steps each)."""

import itertools
import json
import math
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("optuna")

import lmforge  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.errors import OutputError  # noqa: E402
from lmforge.tune import show, tune  # noqa: E402
from tests.conftest import TINY  # noqa: E402

FAST = {**TINY, "train.eval_every": 5, "train.log_every": 5}
GRID = {"optim.lr": [1e-3, 3e-3], "model.n_layer": [1, 2]}


def run_tune(data, out, space, **kw):
    kw.setdefault("sampler", "grid")
    kw.setdefault("pruner", "none")
    kw.setdefault("n_trials", 10)
    return tune(
        "pretrain",
        out=out,
        space=space,
        pretrain_args={"data": str(data), "max_steps": 10, "overrides": dict(FAST)},
        progress=False,
        **kw,
    )


def finished(result):
    return [t for t in result["trials"] if t["state"] in ("COMPLETE", "PRUNED")]


def test_grid_runs_exactly_the_product_and_best_is_the_argmin(char_data, tmp_path, capsys):
    out = tmp_path / "study"
    result = run_tune(char_data, out, GRID)
    done = finished(result)
    assert len(result["trials"]) == 4 and all(t["state"] == "COMPLETE" for t in done)
    combos = sorted((t["params"]["optim.lr"], t["params"]["model.n_layer"]) for t in done)
    assert combos == sorted(itertools.product(GRID["optim.lr"], GRID["model.n_layer"]))
    best = min(done, key=lambda t: t["value"])
    assert result["best_trial"] == best["number"] and result["best_value"] == best["value"]
    # Each trial is a normal run directory keeping only its best checkpoint; study/best is the best trial's.
    trial_dir = out / "trials" / f"{best['number']:04d}"
    assert (trial_dir / "config.yaml").is_file() and (trial_dir / "metrics.jsonl").is_file()
    assert len(list(trial_dir.glob("ckpt-*"))) == 1
    assert (out / "best").resolve() == (trial_dir / "best").resolve()
    assert lmforge.load(out / "best").model is not None
    # --show --json: the table, the best, report.md with the plots.
    assert main(["tune", "--show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["best_params"] == best["params"] and len(shown["trials"]) == 4
    assert {"number", "state", "value", "params"} <= set(shown["trials"][0])
    report = (out / "report.md").read_text()
    assert "plots/history.png" in report and (out / "plots" / "history.png").is_file()
    # A re-run of a finished study runs nothing.
    again = run_tune(char_data, out, GRID)
    assert len(again["trials"]) == 4


def test_an_interrupted_study_continues_without_repeating_finished_trials(
    char_data, tmp_path, monkeypatch, capsys
):
    import lmforge.tasks.lm.run as lm_run

    real, calls = lm_run.pretrain, []

    def interrupted_third(*args, **kwargs):
        calls.append(kwargs["overrides"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C is inside a run
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_run, "pretrain", interrupted_third)
    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        run_tune(char_data, out, GRID, n_trials=4)
    # Stopped before its training began: tune tells how to go on (the trainer had nothing to say).
    assert capsys.readouterr().out.splitlines() == [
        "interrupted: trial 2 counts as failed; the same `lmforge tune` command continues the study"
    ]
    first = show(out, report=False)
    assert [t["state"] for t in first["trials"]] == ["COMPLETE", "COMPLETE", "FAIL"]
    result = run_tune(char_data, out, GRID, n_trials=4)
    assert len(calls) == 5  # only the two missing trials ran (the failed one's budget was not counted)
    done = finished(result)
    assert len(done) == 4
    assert len({json.dumps(t["params"], sort_keys=True) for t in done}) == 4
    assert done[:2] == [t for t in first["trials"] if t["state"] == "COMPLETE"]


def test_two_workers_share_one_study_without_duplicates(char_data, tmp_path):
    out, space = tmp_path / "study", tmp_path / "space.yaml"
    space.write_text("optim.lr: [1.0e-3, 3.0e-3]\nmodel.n_layer: [1, 2]\n")
    overrides = [w for k, v in FAST.items() for w in (f"--{k}", str(v))]
    cmd = [sys.executable, "-m", "lmforge.cli.main", "tune", "pretrain", "--data", str(char_data), "--out",
           str(out), "--space", str(space), "--n-trials", "4", "--sampler", "grid", "--pruner", "none",
           "--max-steps", "10", "--quiet", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err.decode()
    done = finished(show(out, report=False))
    assert len(done) == 4
    assert len({json.dumps(t["params"], sort_keys=True) for t in done}) == 4


def test_the_median_pruner_stops_an_obviously_bad_trial(char_data, tmp_path):
    space = {"optim.lr": [1e-3, 3e-3, 10.0]}
    out = tmp_path / "study"
    tune(
        "pretrain",
        out=out,
        space=space,
        n_trials=3,
        sampler="grid",
        pruner="median",
        seed=3,
        pretrain_args={"data": str(char_data), "max_steps": 20, "overrides": dict(FAST)},
        progress=False,
    )
    trials = show(out, report=False)["trials"]
    assert trials[-1]["params"]["optim.lr"] == 10.0  # seed 3 runs lr 10 last, after two good trials
    bad = trials[-1]
    assert bad["state"] == "PRUNED" and bad["value"] is not None and math.isfinite(bad["value"])
    assert all(t["state"] == "COMPLETE" for t in trials[:2])
    kept = (out / bad["run_dir"] / "metrics.jsonl").read_text().splitlines()
    assert any("val_loss" in line for line in kept)  # the pruned trial keeps its partial metrics
    assert max(json.loads(line)["step"] for line in kept) < 20


BAD_SPACES = {
    "malformed": ("optim.lr: [1, 2\n", "not valid YAML"),
    "not a mapping": ("- 1\n- 2\n", "must be a non-empty mapping"),
    "unknown key": ("optim.lrr: [1.0e-3]\n", "did you mean 'optim.lr'"),
    "low above high": ("optim.lr: {low: 0.1, high: 0.01}\n", "low 0.1 > high 0.01"),
    "log from zero": ("optim.lr: {low: 0.0, high: 0.01, log: true}\n", "low must be above 0"),
    "empty list": ("model.n_layer: []\n", "empty list"),
    "unknown range field": ("optim.lr: {low: 0.1, hi: 0.2}\n", "unknown field 'hi'"),
    "range for grid": ("optim.lr: {low: 1.0e-4, high: 0.01}\n", "needs a list of values"),
}


@pytest.mark.parametrize("case", BAD_SPACES)
def test_a_bad_space_is_one_line_before_any_trial(case, char_data, tmp_path, capsys):
    text, message = BAD_SPACES[case]
    space, out = tmp_path / "space.yaml", tmp_path / "study"
    space.write_text(text)
    code = main(["tune", "pretrain", "--data", str(char_data), "--out", str(out), "--space", str(space),
                 "--sampler", "grid"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sampler", "bayes"], "--sampler 'bayes' is unknown"),
        (["--pruner", "mean"], "--pruner 'mean' is unknown"),
        (["--metric", "accuracy"], "not reported by pretrain"),
        (["--n-trials", "0"], "at least 1"),
        (["--task", "classify"], "--task is not a flag of tune pretrain"),
        (["--storage", "nosuchdb://host/db"], "cannot open the nosuchdb --storage"),
    ],
)
def test_bad_flags_are_one_line(flags, message, char_data, tmp_path, capsys):
    space, out = tmp_path / "space.yaml", tmp_path / "study"
    space.write_text("optim.lr: [1.0e-3]\n")
    code = main(
        ["tune", "pretrain", "--data", str(char_data), "--out", str(out), "--space", str(space), *flags]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_out_holding_another_study_is_refused_unless_overwrite(char_data, tmp_path, capsys):
    out = tmp_path / "study"
    run_tune(char_data, out, {"optim.lr": [1e-3]})
    other = tmp_path / "other.yaml"
    other.write_text("optim.lr: [3.0e-3]\n")
    args = ["tune", "pretrain", "--data", str(char_data), "--out", str(out), "--space", str(other), "--sampler",
            "grid", "--max-steps", "10", "--quiet", *[w for k, v in FAST.items() for w in (f"--{k}", str(v))]]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a different study" in err and err.count("\n") == 1
    assert main([*args, "--overwrite"]) == 0
    trials = show(out, report=False)["trials"]
    assert [t["params"] for t in trials] == [{"optim.lr": 3e-3}]
    # And a folder that is no study at all is refused too.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert (
        main(["tune", "pretrain", "--data", str(char_data), "--out", str(stranger), "--space", str(other)])
        == 2
    )
    assert "not empty" in capsys.readouterr().err


def test_tune_help_does_not_import_optuna_or_torch():
    code = (
        "import sys; from lmforge.cli.main import build_parser; build_parser(); "
        "print('optuna' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_tune_names_its_extra(char_data, tmp_path):
    from tests.test_extras import run_without_extras

    out = run_without_extras(
        tmp_path,
        f"""
        from lmforge.errors import MissingExtraError
        from lmforge.tune import tune

        try:
            tune("pretrain", out="s", space={{"optim.lr": [1e-3]}}, pretrain_args={{"data": {str(char_data)!r}}})
        except MissingExtraError as exc:
            print(exc)
        """,
    )
    assert 'pip install "lmforge[tune]"' in out


def test_on_evaluate_sees_every_validation_and_can_stop_the_run(char_data, tmp_path):
    seen = []

    def stop_at_ten(step, metrics):
        seen.append((step, sorted(metrics)))
        return step >= 10

    result = lmforge.pretrain(
        char_data,
        tmp_path / "run",
        overrides=dict(FAST),
        max_steps=30,
        progress=False,
        on_evaluate=stop_at_ten,
    )
    assert [step for step, _ in seen] == [5, 10] and "val_loss" in seen[0][1]
    assert result.stop_reason == "stopped" and result.step == 10
    assert result.latest is not None and result.latest.name == "ckpt-0000010"


def test_a_finetune_study_maximizes_the_dev_metric(tmp_path, capsys):
    rows = [("good great fine film", "pos"), ("bad awful poor film", "neg")] * 30
    for name in ("train", "dev"):
        (tmp_path / f"{name}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows)
        )
    out, space = tmp_path / "study", tmp_path / "space.yaml"
    space.write_text("lr: [1.0e-3, 1.0e-2]\n")
    code = main(["tune", "finetune", "--task", "classify", "--model", "lstm", "--train", str(tmp_path / "train.tsv"),
                 "--dev", str(tmp_path / "dev.tsv"), "--text-field", "sentence", "--out", str(out), "--space",
                 str(space), "--n-trials", "2", "--sampler", "grid", "--epochs", "1", "--batch-size", "16",
                 "--quiet", "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "macro_f1" and result["direction"] == "maximize"
    assert sorted(t["params"]["lr"] for t in result["trials"]) == [1e-3, 1e-2]
    assert result["best_value"] == max(t["value"] for t in result["trials"])
    assert lmforge.load(out / "best").model is not None


def test_ctrl_c_inside_a_trial_tells_the_tune_command_not_resume(char_data, tmp_path, monkeypatch, capsys):
    import lmforge.tasks.lm.run as lm_run

    real = lm_run.pretrain

    def ctrl_c_at_the_first_evaluation(*args, on_evaluate, **kwargs):
        def hook(step, metrics):
            os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler finishes the step, saves and stops
            return on_evaluate(step, metrics)

        return real(*args, on_evaluate=hook, **kwargs)

    monkeypatch.setattr(lm_run, "pretrain", ctrl_c_at_the_first_evaluation)
    with pytest.raises(KeyboardInterrupt):
        run_tune(char_data, tmp_path / "study", {"optim.lr": [1e-3]}, n_trials=1)
    said = capsys.readouterr().out
    assert "--resume" not in said and said.count("continues the study") == 1, said
    assert "interrupted at step 5: checkpoint saved to" in said
    assert said.rstrip().endswith(
        "trial 0 counts as failed; the same `lmforge tune` command continues the study"
    )


def test_overwrite_replaces_a_folder_only_once_the_new_study_has_started(char_data, tmp_path, monkeypatch):
    import optuna

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    real = optuna.create_study

    def storage_fails(*args, **kwargs):
        raise RuntimeError("the storage cannot be written")

    monkeypatch.setattr(optuna, "create_study", storage_fails)
    with pytest.raises(RuntimeError):
        run_tune(char_data, stranger, {"optim.lr": [1e-3]}, n_trials=1, overwrite=True)
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stranger"]  # and no staging folder left
    monkeypatch.setattr(optuna, "create_study", real)
    result = run_tune(char_data, stranger, {"optim.lr": [1e-3]}, n_trials=1, overwrite=True)
    assert not (stranger / "notes.txt").exists() and len(finished(result)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stranger"]
    # A folder that holds one of the study's inputs is never replaced, study or not.
    space = stranger / "space.yaml"
    space.write_text("optim.lr: [3.0e-3]\n")
    with pytest.raises(OutputError, match="inside"):
        run_tune(char_data, stranger, space, n_trials=1, overwrite=True)
    assert (stranger / "trials" / "0000").is_dir()


# ---- the other fine-tune tasks: each study optimises the dev metric its task reports ---------------------------

TAGGED = [("mr", "O"), ("Kalo", "B-PER"), ("met", "O"), ("in", "O"), ("Rome", "B-LOC"), ("today", "O")]
CHAT = [{"role": "user", "content": "i am bob"}, {"role": "assistant", "content": "hello bob"}]


def task_files(folder, task: str) -> tuple[str, str]:
    """A tiny training and dev file of each task (the same few examples, repeated)."""
    if task == "ner":
        text = "\n".join(f"{w} NNP B-NP {t}" for w, t in TAGGED) + "\n\n"
        train, dev = text * 16, text * 4
        ext = "txt"
    elif task == "qa":
        ctx = "the game was played in the big stadium of the city on day 42 and many fans came"
        para = {"context": ctx, "qas": [{"id": "q", "question": "what day ?", "answers": [
            {"text": "42", "answer_start": ctx.index("42")}]}]}  # fmt: skip
        train, dev = ({"version": "1.1", "data": [{"title": "t", "paragraphs": [para] * n}]} for n in (16, 4))
        train, dev = json.dumps(train), json.dumps(dev)
        ext = "json"
    elif task == "translate":
        text = "red cat\tder rote kater\nblue dog\tein blauer hund\n"
        train, dev = text * 16, text * 2
        ext = "tsv"
    else:
        line = json.dumps({"messages": CHAT}) + "\n"
        train, dev = line * 16, line * 4
        ext = "jsonl"
    paths = []
    for name, body in (("train", train), ("dev", dev)):
        paths.append(folder / f"{name}.{ext}")
        paths[-1].write_text(body, encoding="utf-8")
    return str(paths[0]), str(paths[1])


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    """A random BERT (word pieces, for qa) and a random GPT (characters, for chat): stand-ins for pretrained ones."""
    import dataclasses

    import torch

    from lmforge.checkpoint import save_checkpoint
    from lmforge.models.registry import build_model
    from lmforge.tokenizers import Tokenizer

    folder = tmp_path_factory.mktemp("task-models")
    texts = ["the game was played in the big stadium of the city on day 42 and many fans came what day ?"]
    chars = ["<|system|>\n<|user|>\n<|assistant|>\n", "abcdefghijklmnopqrstuvwxyz 0123456789.,!?'"]
    made = {}
    for arch, tok, block in (
        ("bert", Tokenizer.train("wordpiece", texts, vocab_size=120, min_frequency=1), 64),
        ("gpt", Tokenizer.train("char", chars), 64),
    ):
        torch.manual_seed(0)
        cfg = dict(n_layer=1, n_head=2, n_embd=32, block_size=block, vocab_size=tok.vocab_size)
        model = build_model(arch, cfg)
        config = {"arch": arch, "model": dataclasses.asdict(model.config)}
        made[arch] = str(save_checkpoint(folder / arch, model, tok, config))
    return made


@pytest.mark.parametrize(
    "task, model, metric, direction",
    [
        ("ner", "lstm", "f1", "maximize"),
        ("qa", "bert", "f1", "maximize"),
        ("translate", "seq2seq-test", "bleu", "maximize"),
        ("chat", "gpt", "loss", "minimize"),
    ],
)
def test_each_task_study_optimises_the_metric_its_runs_report(
    task, model, metric, direction, task_models, tmp_path
):
    train, dev = task_files(tmp_path, task)
    out = tmp_path / "study"
    tune(
        "finetune",
        out=out,
        space={"lr": [1e-3, 3e-3]},
        n_trials=2,
        sampler="grid",
        pruner="none",
        finetune_args={
            "task": task,
            "model": task_models.get(model, model),
            "train": train,
            "dev": dev,
            "epochs": 1,
            "batch_size": 8,
            "overrides": {"train.threads": 1},
        },
        progress=False,
    )
    result = show(out, report=False)
    assert (result["metric"], result["direction"]) == (metric, direction)
    pick = min if direction == "minimize" else max
    for trial in result["trials"]:
        logged = (out / trial["run_dir"] / "metrics.jsonl").read_text().splitlines()
        reported = [r[f"val_{metric}"] for r in map(json.loads, logged) if f"val_{metric}" in r]
        assert trial["state"] == "COMPLETE" and reported and trial["value"] == pick(reported)
    assert result["best_value"] == pick(t["value"] for t in result["trials"])
    best_run = out / "trials" / f"{result['best_trial']:04d}"
    assert (out / "best").resolve() == (best_run / "best").resolve()
    assert lmforge.load(out / "best").model is not None


def test_a_field_missing_from_the_data_is_one_line_before_any_trial(tmp_path, capsys):
    rows = "".join(f"{w} movie\t{label}\n" for w, label in [("good", "pos"), ("bad", "neg")] * 10)
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows)
    space, out = tmp_path / "space.yaml", tmp_path / "study"
    space.write_text("optim.lr: [1.0e-3]\n")
    code = main(["tune", "finetune", "--task", "classify", "--model", "lstm", "--train", str(tmp_path / "train.tsv"),
                 "--dev", str(tmp_path / "train.tsv"), "--text-field", "sentence", "--out", str(out), "--space",
                 str(space), "--sampler", "grid"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "has no field 'sentence'" in err and err.count("\n") == 1
    assert not out.exists()
