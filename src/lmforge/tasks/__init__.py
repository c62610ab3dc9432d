"""Tasks (the third layer, docs/architecture.md): one package per task, each owning its file reading, input
encoding, objective, run specification (run.py) and pipeline (pipeline.py): classify (+ sentiment, NLI), ner, qa,
translate (+ summarize), chat, and lm (pretraining). `finetune()` (finetune.py) and `pipeline()` (pipeline.py) are
the entry points; common.py is what the fine-tunes share."""
