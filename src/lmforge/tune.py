"""Hyperparameter search on Optuna: `tune()` runs a study whose trials are ordinary pretrain or fine-tune runs,
`show()` reports one.

    tune("pretrain", out="study", space="space.yaml", n_trials=30, sampler="tpe", pruner="median",
         pretrain_args={"data": "data", "preset": "tiny", "max_steps": 600})
    show("study")

A study folder holds study.json (what the study searches: the command, its space, the metric and direction),
study.db (the default storage, SQLite), trials/NNNN/ (each trial a normal run directory, only its best checkpoint
kept) and best (a link to the best trial's best checkpoint). `n_trials` is the study's total of finished
(complete or pruned) trials, however many processes and re-runs it took: a re-run continues an interrupted study
and a finished one runs nothing. Several processes with the same `out` and `storage` share the study.

The samplers and pruners are Optuna's own; "search by learning methods" (reinforcement-learning controllers) is
not offered: TPE and CMA-ES are the model-based searches that fit a budget of tens of trials.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lmforge import checkpoint as ckpt
from lmforge.config import build_run_config, parse_overrides
from lmforge.errors import ConfigError, TrainingError
from lmforge.extras import require
from lmforge.outputs import check_inputs, check_output, fsync_dir, staged

SAMPLERS = ("grid", "random", "tpe", "cmaes", "nsga2")
PRUNERS = ("median", "successive-halving", "hyperband", "none")
PRETRAIN_METRICS = ("loss", "perplexity", "bits_per_byte")
# The dev metrics each fine-tune reports (its selection metric first); loss is always there.
FINETUNE_METRICS = {
    "classify": ("macro_f1", "accuracy", "weighted_f1", "roc_auc", "loss"),
    "nli": ("macro_f1", "accuracy", "weighted_f1", "loss"),
    "ner": ("f1", "precision", "recall", "loss"),
    "qa": ("f1", "exact_match", "loss"),
    "translate": ("bleu", "chrf", "loss"),
    "summarize": ("rougeL", "rouge1", "rouge2", "loss"),
    "chat": ("loss", "perplexity"),
}
MINIMIZED = ("loss", "perplexity", "bits_per_byte")
# Fine-tune flags a space may name (besides dotted optim.* / train.* / model.* keys).
FINETUNE_FLAGS = (
    "lr",
    "epochs",
    "batch_size",
    "max_length",
    "max_examples",
    "lora_r",
    "lora_alpha",
    "patience",
)
STUDY_FILE = "study.json"


@dataclasses.dataclass
class Param:
    """One searched key: a categorical list, or a float/int range (log-uniform with `log`, a grid with `step`)."""

    name: str
    choices: list | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(
            isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1)
        )

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.is_int:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> Any:
        if self.choices is not None:
            return list(self.choices)
        d = {"low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


# ---- the search space -----------------------------------------------------------------------------------


def _number(value, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def parse_space(raw: Any, source: str = "the space") -> list[Param]:
    """The parameters of a space mapping ({key: [choices] | {low, high, log, step}}), or a one-line ConfigError."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source} must be a non-empty mapping of config keys to a list or {{low, high}}")
    params = []
    for name, spec in raw.items():
        where = f"{source}: {name}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source} has a key {name!r} that is not a config key or flag name")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where} is an empty list; give at least one value")
            if not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
                raise ConfigError(f"{where} must list numbers, strings or booleans")
            params.append(Param(name, choices=list(spec)))
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a list of values or a mapping {{low, high, log, step}}")
        unknown = set(spec) - {"low", "high", "log", "step"}
        if unknown or "low" not in spec or "high" not in spec:
            bad = sorted(map(str, unknown))
            raise ConfigError(
                f"{where} has unknown field {bad[0]!r}; a range is {{low, high, log, step}}"
                if bad
                else f"{where} needs both low and high"
            )
        low, high = _number(spec["low"], f"{where} low"), _number(spec["high"], f"{where} high")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where} log must be true or false")
        step = None if spec.get("step") is None else _number(spec["step"], f"{where} step")
        if low > high:
            raise ConfigError(f"{where} has low {low} > high {high}")
        if log and low <= 0:
            raise ConfigError(f"{where} is a log range, so low must be above 0 (got {low})")
        if step is not None and (step <= 0 or log):
            raise ConfigError(f"{where} step must be positive and cannot be combined with log")
        params.append(Param(name, low=low, high=high, log=log, step=step))
    return params


def load_space(path: str | os.PathLike) -> list[Param]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"space file {path} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"space file {path} is not valid YAML ({first})") from None
    return parse_space(raw, f"space file {path}")


def check_keys(params: list[Param], command: str, pretrain_args: dict, task: str | None) -> None:
    """Refuse a key the command does not have (with a did-you-mean), or a value its config refuses, before any trial."""
    if command == "pretrain":
        base = {k: pretrain_args.get(k) for k in ("arch", "preset")}
        for param in params:
            values = param.choices if param.choices is not None else [param.low, param.high]
            for value in values:
                build_run_config(
                    arch=base["arch"],
                    preset=base["preset"],
                    config_file=pretrain_args.get("config"),
                    overrides={**parse_overrides(pretrain_args.get("overrides")), param.name: value},
                )
        return
    known = [f"optim.{f}" for f in _fields("optim")] + [f"train.{f}" for f in _fields("train")]
    for param in params:
        if param.name in FINETUNE_FLAGS or param.name.startswith("model."):
            continue
        if param.name not in known:
            close = difflib.get_close_matches(param.name, [*FINETUNE_FLAGS, *known], n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; fine-tune flags are {', '.join(FINETUNE_FLAGS)}"
            )
            raise ConfigError(f"unknown key {param.name!r} for fine-tuning {task}{hint}")
        for value in param.choices if param.choices is not None else [param.low, param.high]:
            build_run_config(overrides={param.name: value})


def _fields(section: str) -> list[str]:
    cfg = build_run_config()
    return [f.name for f in dataclasses.fields(getattr(cfg, section))]


# ---- the study ------------------------------------------------------------------------------------------


def _objective_metric(command: str, task: str | None, metric: str | None, direction: str | None):
    allowed = PRETRAIN_METRICS if command == "pretrain" else FINETUNE_METRICS[task]
    metric = metric or allowed[0]
    if metric not in allowed:
        what = "pretrain" if command == "pretrain" else f"fine-tuning {task}"
        raise ConfigError(
            f"--metric {metric!r} is not reported by {what}; choose one of {', '.join(allowed)}"
        )
    inferred = "minimize" if metric in MINIMIZED else "maximize"
    if direction is not None and direction not in ("minimize", "maximize"):
        raise ConfigError(f"--direction must be minimize or maximize, got {direction!r}")
    return metric, direction or inferred


def _make_sampler(optuna, name: str, params: list[Param], seed: int, n_trials: int):
    if name == "grid":
        ranged = [p.name for p in params if p.choices is None]
        if ranged:
            raise ConfigError(
                f"the grid sampler needs a list of values for every key; {ranged[0]} is a range (give a list)"
            )
        return optuna.samplers.GridSampler({p.name: p.choices for p in params}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":  # random start-up trials: Optuna's 10 would be half of a 20-trial study
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, n_trials // 4)))
    if name == "cmaes":
        require("cmaes", "tune", "the CMA-ES sampler")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)


def _make_pruner(optuna, name: str):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def _storage(optuna, url: str):
    """An RDB storage with heartbeats: the running trial of a worker that was killed (not stopped by Ctrl-C, which
    marks it failed) is marked failed three minutes later, so that the study runs it again."""
    kwargs = {"heartbeat_interval": 60, "grace_period": 180}
    if url.startswith("sqlite:"):  # several processes on one file: wait for the lock instead of failing
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as exc:  # the database's driver, e.g. psycopg2 for postgresql://
        raise ConfigError(f"the --storage database needs the {exc.name} package (pip install it)") from None
    except (
        Exception
    ) as exc:  # a malformed URL, an unreachable server, a refused login (no URL: it may hold a password)
        scheme = url.partition(":")[0]
        raise ConfigError(
            f"cannot open the {scheme} --storage ({type(exc).__name__}); check the URL"
        ) from None


def _is_study_dir(path: Path) -> bool:
    return (path / STUDY_FILE).is_file() or all(
        child.name in ("study.db", "trials", "best", "report.md", "plots") or child.name.startswith(".")
        for child in path.iterdir()
    )


def _read_study_file(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        saved = None
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("definition"), dict)
        or "study_name" not in saved
    ):
        raise ConfigError(
            f"{path} is damaged; pass --overwrite to start the study again, or choose another --out"
        )
    return saved


def _write_json(path: Path, obj: dict) -> None:
    with staged(path, folder=False) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def tune(
    command: str,
    out: str | os.PathLike,
    space: str | os.PathLike | dict,
    n_trials: int = 20,
    sampler: str = "tpe",
    pruner: str = "median",
    metric: str | None = None,
    direction: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    max_minutes_per_trial: float | None = None,
    timeout_minutes: float | None = None,
    overwrite: bool = False,
    pretrain_args: dict | None = None,
    finetune_args: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run (or continue) a study until it holds `n_trials` finished trials; returns `summary(...)` of it.

    pretrain_args: pretrain()'s data, config, arch, preset, max_steps and overrides (dotted keys every trial
    shares); finetune_args: finetune()'s task, model, train, dev and its other options."""
    if command not in ("pretrain", "finetune"):
        raise ConfigError(f"tune runs pretrain or finetune, not {command!r}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r} is unknown; choose one of {', '.join(PRUNERS)}")
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"--n-trials must be at least 1, got {n_trials}")
    if max_minutes_per_trial is not None and not max_minutes_per_trial > 0:
        raise ConfigError("--max-minutes-per-trial must be positive")
    pretrain_args = dict(pretrain_args or {})
    finetune_args = dict(finetune_args or {})
    task = finetune_args.get("task") if command == "finetune" else None
    if command == "finetune" and task not in FINETUNE_METRICS:
        raise ConfigError(f"--task {task!r} cannot be tuned; choose one of {', '.join(FINETUNE_METRICS)}")
    if command == "pretrain" and not pretrain_args.get("data"):
        raise ConfigError("tune pretrain needs --data")
    if command == "finetune" and not (finetune_args.get("model") and finetune_args.get("train")):
        raise ConfigError("tune finetune needs --model and --train")
    params = parse_space(space, "the space") if isinstance(space, dict) else load_space(space)
    check_keys(params, command, pretrain_args, task)
    if task in ("classify", "nli") and finetune_args.get("fields") is not None:
        # The given field names must exist in the files before a trial starts (its reader would refuse them then).
        from lmforge.tasks.classify.examples import read_examples

        for path in (finetune_args["train"], finetune_args.get("dev")):
            if path:
                read_examples(path, finetune_args["fields"], max_examples=1)
    metric, direction = _objective_metric(command, task, metric, direction)
    if command == "finetune" and not finetune_args.get("dev") and metric != "loss":
        raise ConfigError(f"the {metric} objective needs a --dev file to score each trial on")
    optuna = require("optuna", "tune", "lmforge tune")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler_obj = _make_sampler(optuna, sampler, params, seed, n_trials)

    out = Path(out)
    definition = {
        "command": command,
        "space": {p.name: p.describe() for p in params},
        "metric": metric,
        "direction": direction,
        "task": task,
    }
    study_file = out / STUDY_FILE
    replacing = None  # what --overwrite replaces: another study's record, or {} for a folder that is no study
    if study_file.is_file():
        try:
            saved = _read_study_file(study_file)
        except ConfigError:
            if not overwrite:
                raise
            saved = {"definition": None, "study_name": None}
        if saved.get("definition") != definition and not overwrite:
            raise ConfigError(
                f"{out} holds a different study (another command, space or metric); pass --overwrite to "
                "replace it, or choose another --out"
            )
        if saved.get("definition") != definition:
            replacing = saved
    external = (
        None if storage is None else _storage(optuna, storage)
    )  # a bad URL is refused before any output
    inputs = _inputs(pretrain_args, finetune_args, space)
    check_output(out, overwrite=overwrite, own=_is_study_dir, inputs=inputs)
    if overwrite and replacing is None and out.is_dir() and not study_file.is_file() and any(out.iterdir()):
        replacing = {}
    name = study_name or out.resolve().name
    record = {"definition": definition, "study_name": name, "storage": None if storage else "study.db"}
    if replacing is not None:
        check_inputs(out, inputs)  # a study folder is "own" to check_output, but replacing it deletes it
        _start_afresh(optuna, out, record, replacing, external, direction)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    with _locked(out / ".study.lock"):  # workers starting together create the storage and study once
        if not study_file.is_file():
            _write_json(study_file, record)
        study = optuna.create_study(
            storage=external or _storage(optuna, url),
            study_name=name,
            direction=direction,
            sampler=sampler_obj,
            pruner=_make_pruner(optuna, pruner),
            load_if_exists=True,
        )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name!r} in the storage maximizes/minimizes the other way; use another --out"
        )
    target = n_trials
    if sampler == "grid":
        target = min(n_trials, math.prod(len(p.choices) for p in params))
    states = optuna.trial.TrialState
    counted = (states.COMPLETE, states.PRUNED, states.RUNNING)  # finished, or being run by a worker
    deadline = None if timeout_minutes is None else time.monotonic() + timeout_minutes * 60

    def objective(trial):
        # Another worker may have filled the study (or taken these grid values) since this trial was asked for.
        others = [t for t in study.get_trials(deepcopy=False, states=counted) if t.number < trial.number]
        if len(others) >= target:
            trial.set_user_attr("skipped", "the study already had its trials")
            raise _Skipped
        if sampler in ("random", "tpe"):  # seeded per trial: reproducible, and workers draw different values
            trial_seed = (seed * 1_000_003 + trial.number) % 2**32  # seeds 0 and 1 share no trial's draws
            study.sampler = _make_sampler(optuna, sampler, params, trial_seed, n_trials)
        values = {p.name: p.suggest(trial) for p in params}
        if sampler == "grid" and any(t.params == values for t in others):
            trial.set_user_attr("skipped", "another worker runs these values")
            raise _Skipped
        return _run_trial(
            optuna,
            trial,
            command,
            out,
            values,
            metric,
            pretrain_args,
            finetune_args,
            max_minutes_per_trial,
            progress,
        )

    skipped_in_a_row = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        done = study.get_trials(deepcopy=False, states=counted)
        if len(done) >= target or (deadline is not None and time.monotonic() >= deadline):
            break
        before = len(study.get_trials(deepcopy=False))
        study.optimize(objective, n_trials=1, catch=(_Skipped,))
        last = [t for t in study.get_trials(deepcopy=False)[before:] if t.user_attrs.get("skipped")]
        skipped_in_a_row = skipped_in_a_row + 1 if last else 0
        if skipped_in_a_row > 2 * target:  # the grid is taken by other workers
            break
        _point_best(study, out)
    _point_best(study, out)
    return summary(study, out)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` between the processes of one machine (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Skipped(Exception):
    """A trial this worker does not run (the study is full, or another worker runs the same grid point)."""


def _inputs(pretrain_args: dict, finetune_args: dict, space) -> list:
    found = [
        pretrain_args.get("data"),
        pretrain_args.get("config"),
        finetune_args.get("train"),
        finetune_args.get("dev"),
    ]
    model = finetune_args.get("model")
    if model and Path(model).exists():
        found.append(model)
    if not isinstance(space, dict):
        found.append(space)
    return found


def _start_afresh(optuna, out: Path, record: dict, old: dict, external, direction: str) -> None:
    """--overwrite: the new study's folder (its record, and its SQLite storage unless the storage is external) is
    made beside `out` and swapped in whole (lmforge.outputs.staged), so that `out` stays as it was if the new study
    fails to start. A replaced study that lived in the external storage is deleted from it last, just before."""
    with staged(out) as tmp:
        (tmp / "trials").mkdir()
        _write_json(tmp / STUDY_FILE, record)
        if external is None:
            storage = _storage(optuna, f"sqlite:///{(tmp / 'study.db').resolve()}")
            optuna.create_study(storage=storage, study_name=record["study_name"], direction=direction)
            storage.remove_session()
            storage.engine.dispose()  # no connection left to the file as it moves
        elif old.get("study_name") is not None and old.get("storage") is None:
            try:
                optuna.delete_study(study_name=old["study_name"], storage=external)
            except KeyError:  # already gone
                pass


def _run_trial(optuna, trial, command, out, values, metric, pretrain_args, finetune_args, minutes, progress):
    run_dir = out / "trials" / f"{trial.number:04d}"
    key = f"val_{metric}"
    state = {"best": None, "pruned_at": None, "last": {}}
    sign = 1 if metric in MINIMIZED else -1

    def on_evaluate(step: int, metrics: dict) -> bool:
        value = metrics.get(key)
        state["last"] = metrics
        if value is None or not math.isfinite(value):
            return False
        if state["best"] is None or sign * value < sign * state["best"]:
            state["best"] = value
        trial.report(value, step)
        if trial.should_prune():
            state["pruned_at"] = step
            return True
        return False

    started = time.monotonic()
    trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
    # Told on Ctrl-C instead of the run's own "--resume" hint: a trial is continued by the study, not resumed.
    hint = f"trial {trial.number} counts as failed; the same `lmforge tune` command continues the study"
    if progress:
        print(f"trial {trial.number}: {json.dumps(values)}", flush=True)
    try:
        if command == "pretrain":
            from lmforge.tasks.lm.run import pretrain

            overrides = {"train.keep_last": 1, **parse_overrides(pretrain_args.get("overrides"))}
            overrides.update({k: v for k, v in values.items()})
            result = pretrain(
                data=pretrain_args["data"],
                out=run_dir,
                config=pretrain_args.get("config"),
                arch=pretrain_args.get("arch"),
                preset=pretrain_args.get("preset"),
                overrides=overrides,
                max_steps=pretrain_args.get("max_steps"),
                max_minutes=minutes,
                progress=False,
                on_evaluate=on_evaluate,
                resume_hint=hint,
            )
        else:
            from lmforge.tasks.finetune import finetune

            args = {k: v for k, v in finetune_args.items() if v is not None}
            overrides = {"train.keep_last": 1, **parse_overrides(args.pop("overrides", None))}
            for k, v in values.items():
                if k in FINETUNE_FLAGS:
                    args[k] = v
                else:
                    overrides[k] = v
            result = finetune(
                out=run_dir,
                overrides=overrides,
                max_minutes=minutes,
                progress=False,
                on_evaluate=on_evaluate,
                resume_hint=hint,
                **args,
            )
    except KeyboardInterrupt:
        # Stopped inside training, the run saved a checkpoint and told the hint itself; before, nothing was told.
        if ckpt.pointed(run_dir, "latest") is None:
            print(f"interrupted: {hint}", flush=True)
        raise
    except TrainingError as exc:  # diverged (a NaN loss): a bad trial that ended early, counted as pruned
        trial.set_user_attr("error", str(exc))
        trial.set_user_attr("metrics", state["last"])
        trial.set_user_attr("minutes", (time.monotonic() - started) / 60)
        if progress:
            print(f"trial {trial.number}: pruned, {exc}", flush=True)
        raise optuna.TrialPruned(str(exc)) from None
    trial.set_user_attr("metrics", {k: v for k, v in result.metrics.items() if v is None or math.isfinite(v)})
    trial.set_user_attr("minutes", (time.monotonic() - started) / 60)
    trial.set_user_attr("stop_reason", result.stop_reason)
    _keep_best_only(run_dir)
    if progress:
        print(f"trial {trial.number}: {metric} {state['best']} ({result.stop_reason})", flush=True)
    if state["pruned_at"] is not None:
        raise optuna.TrialPruned(f"pruned at step {state['pruned_at']}")
    if state["best"] is None:
        raise ConfigError(f"trial {trial.number} reported no {metric}; give the runs validation data")
    return state["best"]


def _keep_best_only(run_dir: Path) -> None:
    best = ckpt.pointed(run_dir, "best")
    if best is None:
        return
    for _, path in ckpt.list_checkpoints(run_dir):
        if path.resolve() != best.resolve():
            shutil.rmtree(path, ignore_errors=True)
    ckpt.point(run_dir, "latest", best)


def _point_best(study, out: Path) -> None:
    """study/best -> the best trial's best checkpoint (a relative link)."""
    try:
        best = study.best_trial
    except ValueError:
        return
    run_dir = out / best.user_attrs.get("run_dir", f"trials/{best.number:04d}")
    target = ckpt.pointed(run_dir, "best")
    if target is None:
        return
    rel = os.path.relpath(target.resolve(), out.resolve())
    link = out / "best"
    tmp = out / f".best.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(rel, tmp, target_is_directory=True)
    os.replace(tmp, link)
    fsync_dir(out)


# ---- the report -----------------------------------------------------------------------------------------


def open_study(out: str | os.PathLike, storage: str | None = None):
    out = Path(out)
    study_file = out / STUDY_FILE
    if not study_file.is_file():
        raise ConfigError(
            f"{out} is not a study folder (no {STUDY_FILE}); run `lmforge tune` with --out {out}"
        )
    saved = _read_study_file(study_file)
    if storage is None and saved.get("storage") is None:
        raise ConfigError(f"the study in {out} lives in an external storage; give it with --storage URL")
    optuna = require("optuna", "tune", "lmforge tune")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = storage or f"sqlite:///{(out / saved['storage']).resolve()}"
    try:
        return optuna.load_study(study_name=saved["study_name"], storage=_storage(optuna, url)), saved
    except KeyError:
        raise ConfigError(f"the storage holds no study named {saved['study_name']!r}") from None


def summary(study, out: Path) -> dict:
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("skipped"):
            continue
        minutes = t.user_attrs.get("minutes")
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.value is not None else _last_value(t),
                "params": t.params,
                "minutes": None if minutes is None else round(minutes, 3),
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    try:
        best = study.best_trial
        best_value, best_params, best_number = best.value, best.params, best.number
    except ValueError:
        best_value = best_params = best_number = None
    return {
        "study": str(out),
        "direction": study.direction.name.lower(),
        "best_trial": best_number,
        "best_value": best_value,
        "best_params": best_params,
        "best": str(out / "best") if (out / "best").exists() else None,
        "trials": trials,
    }


def _last_value(t):
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


def show(out: str | os.PathLike, storage: str | None = None, report: bool = True) -> dict:
    """The study's summary; with `report`, also writes study/report.md with Optuna's matplotlib plots."""
    out = Path(out)
    study, saved = open_study(out, storage)
    result = summary(study, out)
    result["metric"] = saved["definition"]["metric"]
    if report:
        result["report"] = str(write_report(study, out, result))
    return result


def write_report(study, out: Path, result: dict) -> Path:
    require("matplotlib", "tune", "the plots of a study's report")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    lines = [f"# Study {out.name}", "", f"Objective: {result['metric']} ({result['direction']}).", ""]
    if result["best_trial"] is not None:
        lines += [
            f"Best: trial {result['best_trial']}, value {result['best_value']:.6g}, params "
            f"`{json.dumps(result['best_params'])}`.",
            "",
        ]
    lines += ["| trial | state | value | minutes | params |", "|---:|---|---:|---:|---|"]
    for t in result["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.6g}"
        minutes = "" if t["minutes"] is None else f"{t['minutes']:.2f}"
        lines.append(f"| {t['number']} | {t['state']} | {value} | {minutes} | `{json.dumps(t['params'])}` |")
    lines.append("")
    for name, title, plot in (
        ("history", "Optimisation history", vis.plot_optimization_history),
        ("importances", "Parameter importances", vis.plot_param_importances),
        ("parallel", "Parallel coordinates", vis.plot_parallel_coordinate),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.savefig(plots / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            lines += [f"## {title}", "", f"![{title}](plots/{name}.png)", ""]
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            lines += [
                f"## {title}",
                "",
                f"Not available yet ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).",
                "",
            ]
    path = out / "report.md"
    with staged(path, folder=False) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return path


__all__ = ["Param", "load_space", "parse_space", "show", "summary", "tune"]
