"""`lmforge chat CKPT`: an interactive chat in the terminal (or over a pipe) with a chat fine-tuned checkpoint.

Each line read is a user turn, unless it is a command: /reset forgets the conversation, /system TEXT sets the system
message (and resets), /quit (or end of input, Ctrl-D) ends. Replies stream as they are generated; Ctrl-C stops a
reply and the chat goes on. The history loses its oldest turns when it no longer fits the model's context next to
room for the reply. With --sentiment-model, a sentiment classifier reads every user turn and the system message
states what it found and how to answer.
"""

from __future__ import annotations

import sys

from lmforge.cli.common import add_compile_option, add_dtype_option, add_verb, check_text
from lmforge.errors import ConfigError

EXAMPLES = """\
  lmforge finetune --task chat --model gpt-ckpt --train chats.jsonl --out chat-run
  lmforge chat chat-run --system "You are a helpful assistant."
  lmforge chat chat-run --sentiment-model sst2 --temperature 0.7
  printf 'hi\\n/reset\\nhello again\\n' | lmforge chat chat-run --temperature 0
"""

# How to answer a user in each mood; labels of other classifiers get the default.
STRATEGIES = {
    "negative": "acknowledge their feelings and be supportive",
    "positive": "match their good mood and keep it light",
    "neutral": "answer plainly and to the point",
}
DEFAULT_STRATEGY = "answer helpfully"
LABEL_ALIASES = {"neg": "negative", "pos": "positive", "neu": "neutral", "0": "negative", "1": "positive"}


def sentiment_note(label: str, score: float) -> str:
    mood = LABEL_ALIASES.get(label.lower(), label.lower())
    return f"The user seems {mood} ({score:.2f}); {STRATEGIES.get(mood, DEFAULT_STRATEGY)}."


class ChatSession:
    """The conversation state and the prompt of the next turn (kept apart from terminal I/O so tests can call it)."""

    def __init__(self, lm, system: str | None = None, classifier=None, max_new_tokens: int = 100):
        from lmforge.tasks.chat.template import ChatTemplate

        self.lm, self.system, self.classifier, self.max_new_tokens = lm, system, classifier, max_new_tokens
        try:
            self.template = ChatTemplate.from_config(lm.config)
            self.tuned = True
        except ConfigError:  # an ordinary GPT: the same format, though the model never learned it
            self.template = ChatTemplate.for_tokenizer(lm.tokenizer)
            self.tuned = False
        self.history: list[dict] = []

    def reset(self, system: str | None = ...) -> None:
        self.history = []
        if system is not ...:
            self.system = system

    def system_message(self, user_text: str) -> str | None:
        if self.classifier is None:
            return self.system
        found = self.classifier(user_text)
        note = sentiment_note(found["label"], found["score"])
        return f"{self.system} {note}" if self.system else note

    def prompt(self, user_text: str) -> str:
        """The prompt for the reply to `user_text`: system message, as much recent history as fits, the turn."""
        system = self.system_message(user_text)
        messages = ([{"role": "system", "content": system}] if system else []) + self.history
        messages = messages + [{"role": "user", "content": user_text}]
        block = self.lm.model.config.block_size
        reply_room = min(
            self.max_new_tokens, block // 2
        )  # a long reply slides the window; a short one must fit
        opener = len(self.lm.tokenizer.encode(self.template.markers["assistant"]))
        kept = self.template.fit(self.lm.tokenizer, messages, block - reply_room - opener)
        return self.template.render(kept, add_generation_prompt=True)

    def stops(self) -> list[str]:
        return [self.template.markers["user"], self.template.markers["system"]]

    def remember(self, user_text: str, reply: str) -> None:
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "chat",
        help="chat with a checkpoint in the terminal",
        description="An interactive chat with a chat fine-tuned checkpoint (`lmforge finetune --task chat`).\n"
        "Commands: /reset, /system TEXT, /quit (or Ctrl-D). Ctrl-C stops a reply; the chat goes on.\n"
        "Reads stdin line by line, so it also works over a pipe.",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="RUN_OR_CKPT")
    p.add_argument("--system", help="system message (e.g. the assistant's persona)")
    p.add_argument(
        "--sentiment-model",
        metavar="CKPT",
        help="a sentiment classifier run on every user turn; its finding goes into the system message",
    )
    p.add_argument("--max-new-tokens", type=int, default=100, help="longest reply in tokens")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument(
        "--max-turn-chars", type=int, default=1000, help="longest user turn accepted, in characters"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--show-prompt", action="store_true", help="print each prompt sent to the model (debugging)"
    )
    p.add_argument("--device", default="auto")
    add_compile_option(p)
    add_dtype_option(p)


def run(args) -> int:
    import lmforge

    if args.max_turn_chars < 1 or args.max_new_tokens < 1:
        raise ConfigError("--max-turn-chars and --max-new-tokens must be at least 1")
    check_text(args.system, "--system")
    lm = lmforge.load(args.ckpt, device=args.device, compile=args.compile, dtype=args.dtype)
    lm.check_generative()
    if lm.compile_decoding and hasattr(lm.model, "new_cache"):
        from lmforge.generate.sampling import DecodeStep

        DecodeStep.warm_up(lm.model)  # compiles while the user types; replies decode eagerly until then
    classifier = None
    if args.sentiment_model:
        classifier = lmforge.pipeline("sentiment-analysis", model=args.sentiment_model)
    session = ChatSession(lm, args.system, classifier, args.max_new_tokens)
    tty = sys.stdin.isatty()
    if not session.tuned:
        print(
            f"note: {args.ckpt} was not fine-tuned for chat; replies may not follow the turns",
            file=sys.stderr,
        )
    print("chat: type a message; /reset, /system TEXT, /quit", flush=True)
    while True:
        if tty:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input (Ctrl-D in a terminal)
            if tty:
                print(flush=True)  # end the prompt's line, so the shell's prompt starts on a line of its own
            break
        text = line.strip()
        if not tty and text:
            print(f"you> {text}")  # echoed, so a piped transcript reads as a conversation
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            session.reset()
            print("(conversation reset)", flush=True)
            continue
        if text == "/system" or text.startswith("/system "):
            session.reset(text[len("/system") :].strip() or None)
            print(f"(system message set: {session.system or 'none'}; conversation reset)", flush=True)
            continue
        if text.startswith("/"):
            print(
                f"(unknown command {text.split()[0]}; commands are /reset, /system TEXT, /quit)", flush=True
            )
            continue
        if len(text) > args.max_turn_chars:
            print(
                f"(that message is {len(text)} characters; the limit is {args.max_turn_chars}, "
                "please shorten it)",
                flush=True,
            )
            continue
        _reply(session, text, args)
    return 0


def _reply(session: ChatSession, text: str, args) -> None:
    try:
        prompt = session.prompt(text)
    except ConfigError as exc:  # a turn too long for the context: the chat goes on
        print(f"({exc})", flush=True)
        return
    if args.show_prompt:
        print(f"[prompt] {prompt!r}", flush=True)
    print("assistant> ", end="", flush=True)
    pieces = []
    try:
        for piece in session.lm.generate(
            prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            stop=session.stops(),
            seed=args.seed,
            stream=True,
        ):
            pieces.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat; the cut-off turn is not remembered
        print("\n(reply interrupted)", flush=True)
        return
    print(flush=True)
    session.remember(text, "".join(pieces).strip())
