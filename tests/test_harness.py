"""lm-evaluation-harness: the `lmforge` model (lmforge.harness) and the server through lm-eval's local-completions
score tasks whose data the tests write, with the model's own log-probabilities."""

import json
import math

import pytest
import torch

import lmforge
from tests.conftest import TINY
from tests.serve.test_server import server  # noqa: F401 - the fixture

lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = [
    ("alice sees", [" bob", " zzz", " qqq"], 0),
    ("carol helps", [" dave", " xxq", " alice"], 0),
    ("erin calls", [" frank", " bob", " zz"], 1),
    ("bob meets", [" carol", " q", " erin"], 2),
    ("frank likes", [" alice", " dave", " zqx"], 0),
    ("dave finds", [" erin", " at", " bob"], 1),
    ("alice helps", [" carol at", " frank", " zzz"], 0),
    ("bob sees", [" dave", " alice", " o'clock"], 1),
    ("carol calls", [" erin", " bob", " frank"], 2),
    ("erin meets", [" alice", " qqq", " dave at"], 0),
]
DOCS = ["alice sees bob at 3 o'clock.", "frank helps erin.", "dave meets carol at 12 o'clock.\n"]
LONG_DOC = "bob calls dave at 5 o'clock.\n" * 4  # longer than the 64-token context: several windows


@pytest.fixture(scope="module")
def run(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("harness") / "run"
    overrides = {**TINY, "model.block_size": 64, "train.eval_every": 60}
    lmforge.pretrain(char_data, run, overrides=overrides, max_steps=40, progress=False)
    return run


@pytest.fixture(scope="module")
def lm(run):
    return lmforge.load(run, device="cpu")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Three tasks on JSON lines written here: multiple choice, rolling log-likelihood, generation."""
    folder = tmp_path_factory.mktemp("tasks")

    def write(name: str, rows: list[dict], spec: str) -> None:
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{spec}",
            encoding="utf-8",
        )

    write(
        "tiny_mc",
        [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n",
    )
    write(
        "tiny_rolling",
        [{"text": t} for t in [*DOCS, LONG_DOC]],
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
    )
    write(
        "tiny_gen",
        [{"prompt": "alice sees", "answer": " bob"}, {"prompt": "carol helps", "answer": " dave"}],
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 12\nmetric_list:\n  - metric: exact_match\n",
    )
    return folder


def direct_logprob(lm, context_ids: list[int], continuation: str) -> float:
    """log p(continuation | context ids), from one plain forward pass of the model."""
    cont = lm.tokenizer.encode(continuation)
    ids = torch.tensor([context_ids + cont])
    with torch.no_grad():
        logp = lm.model(ids[:, :-1]).float().log_softmax(-1)[0]
    return sum(float(logp[len(context_ids) - 1 + i, t]) for i, t in enumerate(cont))


def evaluate(tasks_dir, names, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        tasks=names, task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True, **kw
    )


def scores(result, task: str) -> list:
    """Each sample's raw answers, in document order."""
    samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
    return [[r[0] for r in s["resps"]] for s in samples]


def test_the_lmforge_model_scores_with_the_model_s_own_logprobs(run, lm, tasks):
    import lmforge.harness  # noqa: F401 - registers "lmforge"

    result = evaluate(
        tasks,
        ["tiny_mc", "tiny_rolling", "tiny_gen"],
        model="lmforge",
        model_args=f"pretrained={run},device=cpu",
        batch_size=4,
    )
    eos = lm.tokenizer.eos_id
    mc = scores(result, "tiny_mc")
    for (question, choices, _), answers in zip(QUESTIONS, mc):
        for choice, (logprob, greedy) in zip(choices, answers):
            expected = direct_logprob(lm, [eos] + lm.tokenizer.encode(question), choice)
            assert logprob == pytest.approx(expected, abs=1e-4)
            assert isinstance(greedy, bool)
    picked = [max(range(3), key=lambda c: a[c][0]) for a in mc]
    assert result["results"]["tiny_mc"]["acc,none"] == pytest.approx(
        sum(p == q[2] for p, q in zip(picked, QUESTIONS)) / len(QUESTIONS)
    )
    rolling = scores(result, "tiny_rolling")
    for doc, (logprob,) in zip(DOCS, rolling):  # shorter than the context: one window after <|eos|>
        assert logprob == pytest.approx(direct_logprob(lm, [eos], doc), abs=1e-3)
    long = rolling[-1][0]
    assert math.isfinite(long) and long < rolling[0][0]
    assert result["results"]["tiny_rolling"]["bits_per_byte,none"] > 0
    generated = scores(result, "tiny_gen")
    for prompt, (text,) in zip(["alice sees", "carol helps"], generated):
        assert text == lm.generate(prompt, max_new_tokens=12, stop=["."])


def test_bad_model_args_are_one_clear_error(run):
    from lmforge.errors import ConfigError
    from lmforge.harness import LmforgeHarnessLM

    with pytest.raises(ConfigError, match="unknown model_args for lmforge: nonsense"):
        LmforgeHarnessLM(pretrained=str(run), nonsense=1)


@pytest.fixture(scope="module")
def server_app(lm):  # served by test_server's `server` fixture (a real uvicorn in a thread)
    from lmforge.serve import create_app

    return create_app(lm, api_key="")


def test_the_server_scores_through_lm_eval_local_completions(server, lm, tasks):
    """lm-eval finds the server's tokenizer routes, sends token ids with echo and logprobs, and reads the same
    log-probabilities the model gives (its contexts carry no <|eos|> before them: lm-eval tokenizes them)."""
    result = evaluate(
        tasks,
        ["tiny_mc"],
        model="local-completions",
        model_args=f"base_url={server}/v1/completions,model=lmforge,num_concurrent=1,max_retries=1",
    )
    for (question, choices, _), answers in zip(QUESTIONS, scores(result, "tiny_mc")):
        for choice, (logprob, _) in zip(choices, answers):
            expected = direct_logprob(lm, lm.tokenizer.encode(question), choice)
            assert logprob == pytest.approx(expected, abs=1e-3)


def test_the_command_line_knows_the_lmforge_model(run, lm, tasks, tmp_path, monkeypatch):
    """`python -m lmforge.harness ...` is lm-eval's own command line with "lmforge" registered."""
    from lmforge.harness import main

    monkeypatch.setattr("sys.argv", ["lmforge.harness"])
    main(
        ["--model", "lmforge", "--model_args", f"pretrained={run},device=cpu", "--tasks", "tiny_rolling",
         "--include_path", str(tasks), "--output_path", str(tmp_path / "out")]
    )  # fmt: skip
    (saved,) = (tmp_path / "out").rglob("results_*.json")
    bits = json.loads(saved.read_text())["results"]["tiny_rolling"]["bits_per_byte,none"]
    eos = lm.tokenizer.eos_id
    nats = -sum(
        direct_logprob(lm, [eos], d) for d in DOCS
    )  # the short documents alone, as a lower bound check
    assert bits > 0 and math.isfinite(bits) and nats > 0
