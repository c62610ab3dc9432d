"""`lmforge tune`: hyperparameter search (Optuna) over pretrain or finetune runs, and `--show` of a study."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json
from lmforge.cli.finetune import add_field_options, fields_from

EXAMPLES = """\
  lmforge tune pretrain --data data --out study --space space.yaml --n-trials 30 --sampler tpe \\
      --pruner median --max-minutes-per-trial 3 --preset tiny --max-steps 600
  lmforge tune finetune --task classify --model minilm --train sst2/train.tsv --dev sst2/dev.tsv \\
      --text-field sentence --out study --space space.yaml --n-trials 20 --metric accuracy
  lmforge tune --show study [--json]          # the trial table, the best trial, study/report.md with plots

space.yaml names config keys (as the --section.key overrides) or fine-tune flags (lr, epochs, batch_size, ...):
  optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
  model.n_layer: [2, 4, 6]            # a list is categorical (and the grid's values)
  model.dropout: {low: 0.0, high: 0.3}
  train.batch_size: {low: 8, high: 64, step: 8}

--n-trials is the study's total of finished trials: re-running the command continues an interrupted study, and
several processes given the same --out (and --storage) share one study. Each trial is a run directory
study/trials/NNNN; study/best links to the best trial's best checkpoint. Other --section.key flags apply to
every trial. `optuna-dashboard sqlite:///study/study.db` browses a study live.
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "tune",
        help="hyperparameter search over pretrain or finetune runs (grid, random, TPE, CMA-ES, NSGA-II)",
        description="Search hyperparameters with Optuna: each trial is a pretrain or finetune run, pruned early "
        "when its validation curve is worse than the others' (median, successive halving, hyperband).",
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("command", nargs="?", choices=["pretrain", "finetune"], help="what each trial runs")
    p.add_argument(
        "--show", metavar="STUDY", help="report the study in this folder instead of running trials"
    )
    p.add_argument("--out", help="study folder: study.json, study.db, trials/NNNN, best, report.md")
    p.add_argument("--space", help="YAML search space: config key or flag -> list of values or {low, high}")
    p.add_argument("--n-trials", type=int, default=20, help="finished trials the study should hold in all")
    p.add_argument("--sampler", default="tpe", help="grid, random, tpe (Bayesian), cmaes or nsga2")
    p.add_argument("--pruner", default="median", help="median, successive-halving, hyperband or none")
    p.add_argument(
        "--metric",
        help="objective: pretrain loss (default), perplexity or bits_per_byte; a fine-tune's dev metric "
        "(default: the task's, e.g. macro_f1)",
    )
    p.add_argument("--direction", choices=["minimize", "maximize"], help="default: inferred from the metric")
    p.add_argument("--max-minutes-per-trial", type=float, help="training time cap of each trial")
    p.add_argument("--timeout", type=float, metavar="MIN", help="start no new trial after this many minutes")
    p.add_argument(
        "--storage",
        help="Optuna storage URL shared by the workers (default sqlite:///OUT/study.db), e.g. "
        "postgresql://user:pw@host/db",
    )
    p.add_argument("--study-name", help="name of the study in the storage (default: the --out folder's name)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out that holds another study or no study, once the new study has started there "
        "(never one that holds the data or the space file)",
    )
    # pretrain's flags
    p.add_argument("--data", help="pretrain: data directory written by `lmforge prepare`")
    p.add_argument("--config", help="pretrain: YAML config file")
    p.add_argument("--arch", help="pretrain: architecture")
    p.add_argument("--preset", help="pretrain: named model size")
    p.add_argument("--max-steps", type=int, help="pretrain: optimizer steps of each trial")
    # finetune's flags
    p.add_argument("--task", help="finetune: classify, nli, ner, qa, translate, summarize or chat")
    p.add_argument("--model", help="finetune: backbone name or checkpoint")
    p.add_argument("--train", help="finetune: labelled training file")
    p.add_argument("--dev", help="finetune: labelled dev file that scores each trial")
    p.add_argument("--epochs", type=float, help="finetune: epochs of each trial")
    p.add_argument("--batch-size", type=int, help="finetune: batch size")
    p.add_argument("--max-examples", type=int, help="finetune: use only the first N training examples")
    p.add_argument("--max-length", type=int, help="finetune: longest input in tokens")
    add_field_options(p)  # finetune classify/nli: the labelled file's fields (SST-2's --text-field sentence)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(accepts_overrides=True)


def run(args) -> int:
    from lmforge.errors import ConfigError
    from lmforge.tune import show, tune

    if args.show:
        if args.command:
            raise ConfigError("--show reports a study; give it without pretrain/finetune")
        result = show(args.show, storage=args.storage)
    else:
        if not args.command:
            raise ConfigError("say what to tune: lmforge tune pretrain ... or lmforge tune finetune ...")
        if not args.out or not args.space:
            raise ConfigError("tune needs --out (the study folder) and --space (the search space file)")
        fields = ("text_field", "text_pair_field", "label_field", "label_sep")
        other = (
            "task",
            "model",
            "train",
            "dev",
            "epochs",
            "batch_size",
            "max_examples",
            "max_length",
            *fields,
        )
        if args.command == "finetune":
            other = ("data", "config", "arch", "preset", "max_steps")
        given = [name for name in other if getattr(args, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} is not a flag of tune {args.command}")
        pretrain_args = {
            "data": args.data,
            "config": args.config,
            "arch": args.arch,
            "preset": args.preset,
            "max_steps": args.max_steps,
            "overrides": args.overrides,
        }
        finetune_args = {
            "task": args.task,
            "model": args.model,
            "train": args.train,
            "dev": args.dev,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "max_examples": args.max_examples,
            "max_length": args.max_length,
            "fields": fields_from(args) if any(getattr(args, f) for f in fields) else None,
            "seed": args.seed,
            "overrides": args.overrides,
        }
        tune(
            args.command,
            out=args.out,
            space=args.space,
            n_trials=args.n_trials,
            sampler=args.sampler,
            pruner=args.pruner,
            metric=args.metric,
            direction=args.direction,
            storage=args.storage,
            study_name=args.study_name,
            seed=args.seed,
            max_minutes_per_trial=args.max_minutes_per_trial,
            timeout_minutes=args.timeout,
            overwrite=args.overwrite,
            pretrain_args=pretrain_args if args.command == "pretrain" else None,
            finetune_args=finetune_args if args.command == "finetune" else None,
            progress=not args.quiet,
        )
        result = show(args.out, storage=args.storage)
    if args.json:
        print_json(result)
        return 0
    print(f"{'trial':>5}  {'state':<8} {'value':>10} {'minutes':>8}  params")
    for t in result["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.5g}"
        minutes = "" if t["minutes"] is None else f"{t['minutes']:.2f}"
        print(f"{t['number']:>5}  {t['state']:<8} {value:>10} {minutes:>8}  {t['params']}")
    if result["best_trial"] is not None:
        print(
            f"best: trial {result['best_trial']}, {result['metric']} {result['best_value']:.5g}, "
            f"params {result['best_params']}"
        )
    if result.get("best"):
        print(f"best checkpoint: {result['best']}")
    print(f"report: {result['report']}")
    return 0
