"""Chat fine-tuning and `lmforge chat`: the conversation reader, the template and its loss mask, truncation, a tiny
GPT that learns a reply pattern, and the interactive verb driven through stdin."""

import ast
import io
import json
import random

import pytest
import torch

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.cli.chat import ChatSession, sentiment_note
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model
from lmforge.tasks.chat.template import ChatTemplate, read_conversations
from lmforge.tokenizers import Tokenizer

NAMES = [
    "bob",
    "ann",
    "tim",
    "eve",
    "sam",
    "kim",
    "joe",
    "liz",
    "max",
    "ned",
    "pat",
    "ray",
    "sue",
    "ted",
    "val",
    "zoe",
    "amy",
    "ben",
    "cal",
    "dan",
    "eli",
    "fay",
    "gus",
    "hal",
    "ivy",
    "jan",
    "kit",
    "lou",
    "meg",
    "nia",
]
HELD_OUT = ["roy", "una"]


def convo(name: str, system: bool = True) -> dict:
    msgs = [{"role": "system", "content": "be kind"}] if system else []
    return {
        "messages": msgs
        + [{"role": "user", "content": f"i am {name}"}, {"role": "assistant", "content": f"hello {name}"}]
    }


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def random_gpt(tmp_path_factory):
    """A random GPT with a character tokenizer that can spell the chat markers (a stand-in for a pretrained one)."""
    texts = ["<|system|>\n<|user|>\n<|assistant|>\n", "abcdefghijklmnopqrstuvwxyz 0123456789.,!?'"]
    tok = Tokenizer.train("char", texts)
    torch.manual_seed(0)
    model = build_model(
        "gpt", dict(n_layer=2, n_head=2, n_embd=48, block_size=160, vocab_size=tok.vocab_size)
    )
    import dataclasses

    folder = tmp_path_factory.mktemp("gpt")
    return save_checkpoint(
        folder / "gpt", model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)}
    )


def test_reader_names_the_bad_line(tmp_path):
    cases = {
        "assistant turn": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}],
        "unknown role": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}],
        "empty content": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
    }
    for words, messages in cases.items():
        path = write_jsonl(tmp_path / "c.jsonl", [convo("bob"), {"messages": messages}])
        with pytest.raises(DataError, match=rf"c\.jsonl:2: .*{words}"):
            read_conversations(path)
    assert len(read_conversations(write_jsonl(tmp_path / "ok.jsonl", [convo("bob"), convo("ann")]))) == 2


def test_loss_mask_covers_exactly_the_assistant_turns(random_gpt):
    lm = lmforge.load(random_gpt)
    template = ChatTemplate.for_tokenizer(lm.tokenizer)
    assert template.markers["user"] == "<|user|>\n" and template.end == "<|eos|>"
    messages = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "i am bob"},
        {"role": "assistant", "content": "hello bob"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "see you"},
    ]
    ids, target = template.encode(lm.tokenizer, messages)
    # The ids spell the rendered template (after the end-of-sequence token every prompt starts with).
    assert lm.tokenizer.decode(ids[1:], skip_special_tokens=False) == template.render(messages)
    masked_in = lm.tokenizer.decode([i for i, t in zip(ids, target) if t], skip_special_tokens=False)
    assert masked_in == "hello bob<|eos|>see you<|eos|>"


def test_truncation_keeps_the_system_message_and_the_latest_turns(random_gpt):
    lm = lmforge.load(random_gpt)
    template = ChatTemplate.for_tokenizer(lm.tokenizer)
    messages = [{"role": "system", "content": "be kind"}]
    for i in range(6):
        messages += [{"role": "user", "content": f"turn {i}"}, {"role": "assistant", "content": f"reply {i}"}]
    kept = template.fit(lm.tokenizer, messages, 80)
    assert kept[0] == messages[0] and kept[-1] == messages[-1] and kept[1]["role"] == "user"
    assert 3 <= len(kept) < len(messages) and len(template.encode(lm.tokenizer, kept)[0]) <= 80
    with pytest.raises(ConfigError, match="do not fit"):
        template.fit(lm.tokenizer, messages[:1] + [{"role": "user", "content": "x" * 100}], 80)


@pytest.fixture(scope="module")
def chat_run(random_gpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    rng = random.Random(0)
    train = [convo(n, system=rng.random() < 0.5) for n in NAMES for _ in range(4)]
    rng.shuffle(train)
    files = {
        "train": write_jsonl(folder / "train.jsonl", train),
        "dev": write_jsonl(folder / "dev.jsonl", [convo(n) for n in HELD_OUT]),
    }
    result = lmforge.finetune(
        "chat",
        str(random_gpt),
        files["train"],
        folder / "run",
        dev=files["dev"],
        epochs=12,
        lr=3e-3,
        progress=False,
    )
    return result, folder


def test_finetuned_gpt_learns_the_reply_and_carries_the_template(chat_run):
    result, folder = chat_run
    metrics = [json.loads(ln) for ln in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert losses[-1] < 0.5 * losses[0]
    lm = lmforge.load(result.best)
    template = ChatTemplate.from_config(lm.config)
    assert lm.config["chat_template"] == template.jinja()
    for name in HELD_OUT:
        prompt = template.render([{"role": "user", "content": f"i am {name}"}], add_generation_prompt=True)
        assert lm.generate(prompt, max_new_tokens=12, temperature=0).startswith("hello")


def test_server_renders_the_stored_template(chat_run):
    pytest.importorskip("fastapi")
    from lmforge.serve.app import compile_template

    lm = lmforge.load(chat_run[0].best)
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "i am roy"}]
    served = compile_template(lm.config["chat_template"])
    rendered = served.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
    assert rendered == ChatTemplate.from_config(lm.config).render(messages, add_generation_prompt=True)


def test_chat_through_stdin(chat_run, monkeypatch, capsys):
    from lmforge.cli.main import main

    lines = [
        "i am roy",
        "i am una",
        "/reset",
        "/system be brief",
        "x" * 50,
        "i am bob",
        "/quit",
        "never read",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code = main(
        [
            "chat",
            str(chat_run[0].best),
            "--temperature",
            "0",
            "--max-turn-chars",
            "40",
            "--show-prompt",
            "--max-new-tokens",
            "12",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    replies = [ln[len("assistant> ") :] for ln in out.splitlines() if ln.startswith("assistant> ")]
    prompts = [ln[len("[prompt] ") :] for ln in out.splitlines() if ln.startswith("[prompt] ")]
    assert len(replies) == len(prompts) == 3
    # What was streamed is the model's greedy reply to the prompt it was shown, and the reply opens as trained.
    lm = lmforge.load(chat_run[0].best)
    for prompt, reply in zip(prompts, replies):
        expected = lm.generate(
            ast.literal_eval(prompt), max_new_tokens=12, temperature=0, stop=["<|user|>\n"]
        )
        assert reply == expected.strip() and reply.startswith("hel")
    # The second turn sees the first; after /reset and /system the third sees only the new system message.
    assert "i am roy" in prompts[1] and "hello" in prompts[1]
    assert "roy" not in prompts[2] and "<|system|>\\nbe brief" in prompts[2]
    assert "the limit is 40" in out and "(conversation reset)" in out and "never read" not in out


def test_chat_refuses_a_turn_longer_than_the_context(chat_run):
    session = ChatSession(lmforge.load(chat_run[0].best), max_new_tokens=12)
    with pytest.raises(ConfigError, match="do not fit"):
        session.prompt("i am " + "bob " * 30)


def test_sentiment_aware_system_message(chat_run, tmp_path):
    rng = random.Random(0)
    rows = ["sentence\tlabel"]
    for _ in range(200):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(["great", "happy", "lovely"] if label == "pos" else ["awful", "sad", "terrible"])
        rows.append(
            f"{' '.join(rng.sample(['i', 'am', 'feel', 'so', 'today', 'really'], 3))} {word}\t{label}"
        )
    (tmp_path / "s.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    clf = lmforge.finetune(
        "classify",
        "lstm",
        tmp_path / "s.tsv",
        tmp_path / "clf",
        epochs=4,
        lr=3e-3,
        fields=lmforge.tasks.classify.examples.Fields(text="sentence"),
        progress=False,
    )
    classifier = lmforge.pipeline("sentiment-analysis", model=clf.best)
    session = ChatSession(
        lmforge.load(chat_run[0].best), system="be kind", classifier=classifier, max_new_tokens=12
    )
    prompt = session.prompt("i feel so sad")
    assert "The user seems negative (" in prompt and "acknowledge their feelings" in prompt
    assert "The user seems positive (" in session.prompt("really happy today")
    assert sentiment_note("LABEL_7", 0.5) == "The user seems label_7 (0.50); answer helpfully."


def test_cli_bad_conversation_is_one_error_line(random_gpt, tmp_path, capsys):
    from lmforge.cli.main import main

    bad = write_jsonl(
        tmp_path / "bad.jsonl", [convo("bob"), {"messages": [{"role": "assistant", "content": "hi"}]}]
    )
    code = main(
        [
            "finetune",
            "--task",
            "chat",
            "--model",
            str(random_gpt),
            "--train",
            bad,
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code != 0 and len(err) == 1 and "bad.jsonl:2" in err[0] and "starts with an assistant turn" in err[0]
    )
