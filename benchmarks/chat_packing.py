"""Chat fine-tuning with and without packing, side by side (issue 7): DailyDialog conversations on a small GPT.

    .venv/bin/python benchmarks/chat_packing.py [--steps 40] [--batch-size 16] [--rounds 2] [--block-size 512]

DailyDialog's training dialogues become user/assistant conversations (utterances alternate, the user first); a
byte-level BPE tokenizer is trained on them and a randomly initialised GPT (6 x 384, the given block) saved as the
starting checkpoint (speed does not depend on the weights). `lmforge.finetune("chat", ...)` then runs --steps
steps with `train.pack` false and true, each in its own process, turns alternating over --rounds. Prints JSON:
conversations/s and steps/s (median), tokens actually computed per step (rows x width), peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
from pathlib import Path

from common import emit, machine, peak_rss_mb, run_alternating, shared


def one_run(args) -> dict:
    import lmforge
    from lmforge.train.objectives import LabelledSequences  # chat's objective

    out = Path(args.out)
    computed = []
    original = LabelledSequences.next_batch

    def counting(self, generator):  # the tensor each step really computes on
        batch = original(self, generator)
        computed.append(batch[0].numel())
        return batch

    LabelledSequences.next_batch = counting
    run = out / f"run-{args.one}"
    shutil.rmtree(run, ignore_errors=True)
    result = lmforge.finetune(
        "chat",
        str(out / "gpt"),
        out / "chats.jsonl",
        run,
        epochs=1,
        max_examples=args.steps * args.batch_size,
        batch_size=args.batch_size,
        progress=False,
        overrides={"train.pack": args.one == "packed", "train.eval_every": 10**9},
    )
    return {
        "run": args.one,
        "steps": result.step,
        "seconds": result.seconds,
        "conversations_per_s": result.step * args.batch_size / result.seconds,
        "computed_tokens_per_step": statistics.mean(computed),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def make_data(out: Path, block: int) -> int:
    import torch

    from lmforge.checkpoint import save_checkpoint
    from lmforge.models.registry import build_model
    from lmforge.tokenizers import Tokenizer

    chats = []
    for line in shared("dailydialog/train/dialogues_train.txt").read_text(encoding="utf-8").splitlines():
        turns = [t.strip() for t in line.split("__eou__") if t.strip()]
        if len(turns) >= 2:
            roles = ["user", "assistant"] * len(turns)
            chats.append({"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]})
    (out / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    texts = ["<|system|>\n<|user|>\n<|assistant|>\n"] + [
        m["content"] for c in chats[:3000] for m in c["messages"]
    ]
    tok = Tokenizer.train("bpe", texts, vocab_size=4096)
    torch.manual_seed(0)
    model = build_model(
        "gpt", dict(n_layer=6, n_head=6, n_embd=384, block_size=block, vocab_size=tok.vocab_size)
    )
    save_checkpoint(out / "gpt", model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)})
    return len(chats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--out", default="/tmp/lmforge-chat-packing")
    ap.add_argument("--one", choices=("padded", "packed"), help=argparse.SUPPRESS)  # internal: one run
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    conversations = make_data(out, args.block_size)
    options = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--out", str(out)]
    results = run_alternating(__file__, ("padded", "packed"), options, args.rounds)
    rows = {
        run: {
            "conversations_per_s": round(statistics.median(r["conversations_per_s"] for r in rs), 2),
            "computed_tokens_per_step": round(rs[0]["computed_tokens_per_step"]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
        for run, rs in results.items()
    }
    emit(
        {
            "benchmark": "chat_packing",
            "data": f"DailyDialog train ({conversations:,} conversations)",
            "model": f"GPT 6x384, block {args.block_size}, random init",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "runs": rows,
            "speedup": round(
                rows["packed"]["conversations_per_s"] / rows["padded"]["conversations_per_s"], 2
            ),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
