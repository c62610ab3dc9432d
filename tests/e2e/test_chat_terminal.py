"""`lmforge chat` in a real (pseudo-)terminal, driven as a user would: wait for the prompt, type a line, watch the
reply stream in and the next prompt come, use /system and /reset, send a turn that is too long, and leave with /quit
or Ctrl-D. The model is tiny, so what it says is never checked, only that something was streamed; what the turns
were is read from --show-prompt, the CLI's own debugging output."""

import codecs
import io
import os
import re
import select
import subprocess
import sys
import time

import pytest

import lmforge
from tests.tasks.test_chat import chat_run, random_gpt  # noqa: F401  (fixtures: a tiny chat fine-tuned GPT)
from tests.tasks.test_classify import FIELDS, sentiment  # noqa: F401  (fixture: a keyword sentiment data set)

pty = pytest.importorskip("pty")  # POSIX only

ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
PROMPT = r"(?:^|\n)you> "
TIMEOUT = 120  # seconds for anything to show: generous, the machine may be busy


def screen(text: str) -> str:
    """What a reader sees of the terminal's output: no colour or cursor codes, plain newlines."""
    return ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "")


class Terminal:
    """`python -m lmforge chat ...` with a pseudo-terminal as its stdin, stdout and stderr."""

    def __init__(self, *args):
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the CLI must flush by itself
        env.update(OMP_NUM_THREADS="1", TERM="dumb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmforge", "chat", *map(str, args)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.fd, self.closed = master, False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.raw, self.pos = "", 0  # all output so far; how much of its screen() the expectations consumed

    def transcript(self) -> str:
        return screen(self.raw)

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: every copy of the terminal's other end is closed, the chat is gone
            data = b""
        if not data:
            self.closed = True
        self.raw += self.decoder.decode(data, final=not data)

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """Wait for `pattern` after what was expected before; the screen text up to it and the match."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.transcript()
            found = re.compile(pattern).search(shown, self.pos)
            if found:
                before, self.pos = shown[self.pos : found.end()], found.end()
                return before
            left = deadline - time.monotonic()
            if self.closed or left <= 0:
                why = "the chat closed the terminal" if self.closed else f"{timeout}s passed"
                raise AssertionError(
                    f"waited for {pattern!r} but {why}; the terminal shows:\n{shown[self.pos :]}"
                )
            self._read(min(left, 1.0))

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def say(self, line: str) -> str:
        """Type a line and Enter; what shows until the next prompt."""
        self.type(line + "\r")
        return self.expect(PROMPT)

    def exit_code(self, timeout: float = TIMEOUT) -> int:
        """Read to the end of the output (the chat closes the terminal as it exits); the exit status."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(1.0)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self.fd)


@pytest.fixture
def terminals():
    opened = []

    def open_terminal(*args):
        opened.append(Terminal(*args))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


def streamed(shown: str) -> str:
    """The reply in what a turn showed: after "assistant> ", up to the next prompt."""
    assert shown.count("assistant> ") == 1, shown
    return re.sub(PROMPT + "$", "", shown.split("assistant> ", 1)[1])


def reply_and_prompt(shown: str) -> tuple[str, str]:
    """The streamed reply and the --show-prompt line in what a turn showed."""
    prompts = re.findall(r"^\[prompt\] (.*)$", shown, re.M)
    assert len(prompts) == 1, shown
    return streamed(shown), prompts[0]


def test_a_conversation_in_a_terminal(chat_run, terminals):
    term = terminals(
        chat_run[0].best,
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--max-turn-chars",
        "40",
        "--show-prompt",
    )
    assert "/reset, /system TEXT, /quit" in term.expect(
        PROMPT
    )  # the greeting, then the prompt, before any input

    shown = term.say("i am roy")
    assert shown.startswith("i am roy\n")  # the terminal echoes what was typed
    reply, prompt = reply_and_prompt(shown)
    assert reply.strip() and "i am roy" in prompt

    reply, prompt = reply_and_prompt(term.say("i am una"))
    assert reply.strip() and "i am roy" in prompt and "i am una" in prompt  # the history came along

    assert "(conversation reset)" in term.say("/reset")
    reply, prompt = reply_and_prompt(term.say("i am bob"))
    assert reply.strip() and "i am bob" in prompt and "roy" not in prompt and "una" not in prompt

    assert "(system message set: be brief; conversation reset)" in term.say("/system be brief")
    reply, prompt = reply_and_prompt(term.say("i am ann"))
    assert reply.strip() and "be brief" in prompt and "i am ann" in prompt and "bob" not in prompt

    shown = term.say("x" * 60)
    assert "that message is 60 characters; the limit is 40" in shown and "assistant> " not in shown
    assert "unknown command /nope" in term.say("/nope")

    term.type("/quit\r")
    assert term.exit_code() == 0
    assert "Traceback" not in term.transcript()


def test_ctrl_d_ends_the_chat_on_a_line_of_its_own(chat_run, terminals):
    term = terminals(chat_run[0].best, "--temperature", "0", "--max-new-tokens", "8")
    term.expect(PROMPT)
    assert streamed(term.say("i am eve")).strip()
    term.type("\x04")  # Ctrl-D on an empty line: end of input
    assert term.exit_code() == 0
    shown = term.transcript()
    assert shown.endswith("you> \n") and "Traceback" not in shown


@pytest.fixture(scope="module")
def sentiment_model(sentiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("sentiment-model") / "run"
    return lmforge.finetune(
        "classify", "lstm", sentiment / "train.tsv", out, fields=FIELDS, epochs=3, lr=3e-3, progress=False
    ).best


def test_sentiment_aware_chat_states_the_mood(chat_run, sentiment_model, terminals):
    term = terminals(
        chat_run[0].best,
        "--sentiment-model",
        sentiment_model,
        "--system",
        "be kind",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--show-prompt",
    )
    term.expect(PROMPT)
    for line in ("the film was really awful", "a great story and lovely music"):
        reply, prompt = reply_and_prompt(term.say(line))
        # The classifier's finding (whichever it is) and how to answer stand in the system message.
        assert reply.strip() and line in prompt
        assert re.search(r"be kind The user seems (negative|positive) \(\d\.\d\d\); \w+", prompt), prompt
    term.type("/quit\r")
    assert term.exit_code() == 0


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(chat_run, monkeypatch, capsys):
    from lmforge.cli.main import main
    from lmforge.lm import LM

    generate, calls = LM.generate, []

    def interrupted_once(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            yield from generate(self, *args, **kwargs)
            return
        yield "hel"
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a reply

    monkeypatch.setattr(LM, "generate", interrupted_once)
    monkeypatch.setattr("sys.stdin", io.StringIO("i am roy\ni am una\n/quit\n"))
    code = main(
        ["chat", str(chat_run[0].best), "--temperature", "0", "--max-new-tokens", "8", "--show-prompt"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "assistant> hel\n(reply interrupted)\n" in out and len(calls) == 2
    prompts = [ln for ln in out.splitlines() if ln.startswith("[prompt] ")]
    assert "i am una" in prompts[1] and "roy" not in prompts[1]  # the cut-off turn was not remembered
