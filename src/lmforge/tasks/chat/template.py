"""Conversations for chat fine-tuning: the JSONL reader, the chat template and the loss mask.

A conversation is one JSON object per line, {"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}.
The template writes every message as `<role marker><content><end>`, where <end> is the tokenizer's end-of-sequence
token, so a reply ends the way generation ends (LM.generate stops at that token). The role markers are the first
style whose text the tokenizer encodes and decodes back unchanged: "<|user|>\\n" for byte-level BPE, plain
"user\\n" for a character tokenizer that never saw "<" or "|". The template is also kept as a Jinja string (Hugging
Face's `messages` / `add_generation_prompt` convention) in the checkpoint's config.json, which serve/app.py renders.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")
# Marker styles, most explicit first; the first one the tokenizer round-trips is used.
STYLES = (
    {r: f"<|{r}|>\n" for r in ROLES},
    {r: f"{r}\n" for r in ROLES},
)


@dataclass(frozen=True)
class ChatTemplate:
    markers: dict[str, str]
    end: str

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> ChatTemplate:
        if tokenizer.eos_id is None:
            raise ConfigError("the tokenizer has no end-of-sequence token to end the turns of a chat")
        end = tokenizer.id_to_token(tokenizer.eos_id)
        for markers in STYLES:
            if all(tokenizer.round_trips(m) for m in markers.values()):
                return cls(dict(markers), end)
        raise ConfigError("the tokenizer cannot spell any chat role marker (e.g. 'user' and a newline)")

    @classmethod
    def from_config(cls, config: dict) -> ChatTemplate:
        """The template a chat fine-tune stored in its checkpoint config."""
        spec = config.get("data", {}).get("chat") if isinstance(config.get("data"), dict) else None
        if not spec:
            raise ConfigError("this checkpoint was not fine-tuned for chat (`lmforge finetune --task chat`)")
        return cls(dict(spec["markers"]), spec["end"])

    def to_dict(self) -> dict:
        return {"markers": self.markers, "end": self.end}

    def jinja(self) -> str:
        """A self-contained Jinja template: the markers are JSON (= Jinja) literals, so it needs no variables."""
        markers, end = json.dumps(self.markers), json.dumps(self.end)
        return (
            "{% for message in messages %}"
            "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
            "{{ raise_exception('unknown role ' + message['role']) }}"
            "{% endif %}"
            "{{ " + markers + "[message['role']] + message['content'] + " + end + " }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ " + json.dumps(self.markers["assistant"]) + " }}{% endif %}"
        )

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The prompt text of `messages`, rendered by the Jinja template exactly as the server renders it."""
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.jinja()).render(
                messages=messages, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as exc:
            raise ConfigError(f"the chat template refused these messages: {exc}") from None

    # ---- tokens --------------------------------------------------------------------------------------
    def encode(self, tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation, after the end-of-sequence token that starts every prompt (as in
        LM.generate), and for each id whether it is a target: only assistant contents and their end markers."""
        ids, target = [tokenizer.eos_id], [False]
        for m in messages:
            marker = tokenizer.encode(self.markers[m["role"]])
            body = tokenizer.encode(m["content"] + self.end)
            ids += marker + body
            target += [False] * len(marker) + [m["role"] == "assistant"] * len(body)
        return ids, target

    def fit(self, tokenizer: Tokenizer, messages: list[dict], budget: int) -> list[dict]:
        """The conversation with its oldest turns dropped until it takes at most `budget` tokens; the system message
        stays, and the kept turns start with a user turn. Raises ConfigError when even the last turn does not fit."""
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system) :]
        while turns:
            if len(self.encode(tokenizer, system + turns)[0]) <= budget:
                return system + turns
            turns = turns[1:]
            while turns and turns[0]["role"] != "user":  # a kept history starts with what the user said
                turns = turns[1:]
        raise ConfigError(
            f"the system message and the latest turn do not fit in {budget} tokens of context; shorten them"
        )


def read_conversations(path: str | os.PathLike, max_conversations: int | None = None) -> list[list[dict]]:
    """Conversations of a JSONL file, validated: known roles, a system message only first, a user turn before any
    assistant turn, non-empty string contents, and at least one assistant turn to learn from."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as UTF-8 text ({type(exc).__name__})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        out.append(check_messages(_messages_of(line, f"{path}:{n}"), f"{path}:{n}"))
        if max_conversations is not None and len(out) >= max_conversations:
            break
    if not out:
        raise DataError(f"{path} holds no conversations")
    return out


def _messages_of(line: str, where: str) -> list:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise DataError(f"{where}: not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise DataError(f'{where}: expected an object {{"messages": [...]}}')
    return record["messages"]


def check_messages(messages: list, where: str = "the conversation") -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i + 1} needs a string 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(
                f"{where}: message {i + 1} has unknown role {role!r}; roles are {', '.join(ROLES)}"
            )
        if not m["content"].strip():
            raise DataError(f"{where}: message {i + 1} ({role}) has empty content")
        if role == "system" and i > 0:
            raise DataError(f"{where}: a system message may only come first (message {i + 1})")
        out.append({"role": role, "content": m["content"]})
    first = next((m["role"] for m in out if m["role"] != "system"), None)
    if first == "assistant":
        raise DataError(
            f"{where}: the conversation starts with an assistant turn; it must start with a user turn"
        )
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant turn to learn from")
    return out
