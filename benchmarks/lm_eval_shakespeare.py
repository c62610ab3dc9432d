"""lm-evaluation-harness on an lmforge model: two tasks built from tiny Shakespeare's validation text (the last 10% of
the characters, as recipe_shakespeare.py splits it), run through `python -m lmforge.harness --model lmforge`.

    .venv/bin/python benchmarks/recipe_shakespeare.py --fast --out /tmp/lmeval-shakespeare     # the model
    .venv/bin/python benchmarks/lm_eval_shakespeare.py --ckpt /tmp/lmeval-shakespeare/run/latest \
        --data /tmp/lmeval-shakespeare/data

- shakespeare_rolling (loglikelihood_rolling): the validation text cut into passages of whole lines (about
  --passage-chars characters each); lm-eval's word_perplexity, byte_perplexity and bits_per_byte. For comparison,
  `lmforge evaluate` scores the same checkpoint on the whole validation split (non-overlapping windows over one
  stream; lm-eval scores each passage alone after <|eos|>).
- shakespeare_next_line (multiple_choice): four lines of a speech, then which of four candidate lines comes next:
  the real one or three lines drawn from elsewhere in the validation text (chance: 0.25); acc and acc_norm.

The task YAMLs and their JSON-lines data are written to --tasks-dir (a temporary folder by default), never into
the repository. Prints lm-eval's table and a JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emit, machine, shared


def validation_text() -> str:
    text = shared("tinyshakespeare/input.txt").read_text(encoding="utf-8")
    return text[int(len(text) * 0.9) :]


def passages(text: str, chars: int) -> list[str]:
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        current += line
        if len(current) >= chars:
            out.append(current)
            current = ""
    return out + ([current] if current.strip() else [])


def next_line_questions(text: str, n: int, seed: int) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    rng = random.Random(seed)
    questions = []
    for start in rng.sample(range(len(lines) - 5), n):
        context, answer = lines[start : start + 4], lines[start + 4]
        wrong = rng.sample([x for x in lines if x != answer], 3)
        choices = [answer, *wrong]
        rng.shuffle(choices)
        questions.append(
            {"context": "\n".join(context) + "\n", "choices": choices, "answer": choices.index(answer)}
        )
    return questions


def write_tasks(folder: Path, passage_chars: int, questions: int, seed: int) -> tuple[int, int]:
    text = validation_text()
    docs = passages(text, passage_chars)
    mc = next_line_questions(text, questions, seed)
    for name, rows in (("rolling", [{"text": d} for d in docs]), ("next_line", mc)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
    (folder / "shakespeare_rolling.yaml").write_text(
        "task: shakespeare_rolling\n"
        + head.format(folder / "rolling.jsonl")
        + "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n"
        "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        encoding="utf-8",
    )
    (folder / "shakespeare_next_line.yaml").write_text(
        "task: shakespeare_next_line\n"
        + head.format(folder / "next_line.jsonl")
        + "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        encoding="utf-8",
    )
    return len(docs), len(mc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="an lmforge checkpoint or run directory (a causal model)")
    ap.add_argument("--data", help="its prepared data (lmforge prepare): also scored by `lmforge evaluate`")
    ap.add_argument(
        "--tasks-dir", help="where to write the task YAMLs and data (default: a temporary folder)"
    )
    ap.add_argument("--passage-chars", type=int, default=2000)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    folder = Path(args.tasks_dir or tempfile.mkdtemp(prefix="lmeval-tasks-"))
    folder.mkdir(parents=True, exist_ok=True)
    n_docs, n_questions = write_tasks(folder, args.passage_chars, args.questions, args.seed)
    out = folder / "results"
    command = [
        sys.executable, "-m", "lmforge.harness",
        "--model", "lmforge", "--model_args", f"pretrained={args.ckpt}", "--device", "cpu",
        "--tasks", "shakespeare_rolling,shakespeare_next_line", "--include_path", str(folder),
        "--batch_size", str(args.batch_size), "--output_path", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    wall = time.perf_counter() - start
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["results"]

    import lmforge

    own = (
        lmforge.load(args.ckpt, device="cpu").evaluate(args.data)
        if args.data
        else {"bits_per_byte": math.nan}
    )
    rolling, mc = results["shakespeare_rolling"], results["shakespeare_next_line"]
    emit(
        {
            "benchmark": "lm_eval_shakespeare (python -m lmforge.harness --model lmforge)",
            "ckpt": args.ckpt,
            "passages": n_docs,
            "questions": n_questions,
            "lm_eval_bits_per_byte": round(rolling["bits_per_byte,none"], 4),
            "lm_eval_byte_perplexity": round(rolling["byte_perplexity,none"], 4),
            "lm_eval_word_perplexity": round(rolling["word_perplexity,none"], 2),
            "lmforge_evaluate_bits_per_byte": round(own["bits_per_byte"], 4),
            "next_line_acc": round(mc["acc,none"], 4),
            "next_line_acc_stderr": round(mc["acc_stderr,none"], 4),
            "next_line_acc_norm": round(mc["acc_norm,none"], 4),
            "lm_eval_wall_seconds": round(wall, 1),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
