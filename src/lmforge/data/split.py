"""Train/dev/test splits of a labelled task file (`lmforge split`): stratified by label with exact per-label counts,
leak-free by group, deterministic by seed, written in the file's own format.

Each label's examples are shared out by largest-remainder rounding of count x fraction, so the per-label counts of
the splits are exact (the sum of the roundings is the label's count) and every split has each label's share.
With groups (a speaker, a source document, a CoNLL -DOCSTART- document), whole groups are assigned: largest groups
first, each to the split whose per-label counts it brings closest to their targets, so no group is in two splits
and stratification holds as closely as the groups allow.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.labelled import LabelledFile, Record, field_value, format_records, read_labelled
from lmforge.errors import ConfigError, DataError
from lmforge.outputs import check_output, staged

SPLITS = ("train", "dev", "test")
DOCUMENT = "document"  # --group of a CoNLL file: its -DOCSTART- documents


@dataclass
class SplitOptions:
    val: float = 0.1
    test: float = 0.1
    stratify: str | None = None  # the label field
    group: str | None = None  # the field whose values must not cross splits
    seed: int = 0
    no_header: bool = False  # CSV/TSV without a header row (fields are column numbers)

    def validate(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1) or self.val + self.test >= 1:
            raise ConfigError(
                f"--val and --test must be fractions in [0, 1) that leave some training data, got {self.val} and {self.test}"
            )
        if self.val == 0 and self.test == 0:
            raise ConfigError("--val and --test are both 0: there is nothing to split off")


def largest_remainder(count: int, fractions: list[float]) -> list[int]:
    """`count` shared out by `fractions` (summing to 1): each share rounded down, the rest given one by one to the
    largest remainders (ties to the earlier share). The shares sum to `count` exactly."""
    raw = [count * f for f in fractions]
    shares = [math.floor(r + 1e-9) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - shares[i]), i))
    for i in order[: count - sum(shares)]:
        shares[i] += 1
    return shares


def assign(labels: list[str], groups: list[str] | None, fractions: list[float], seed: int) -> list[int]:
    """The split (an index into `fractions`) of each example, stratified by `labels` (all equal: unstratified)
    and, with `groups`, by whole groups."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    targets = {label: largest_remainder(len(ix), fractions) for label, ix in by_label.items()}
    out = [0] * len(labels)
    if groups is None:
        for label in sorted(by_label):
            ix = by_label[label]
            rng.shuffle(ix)
            start = 0
            for s, k in enumerate(targets[label]):
                for i in ix[start : start + k]:
                    out[i] = s
                start += k
        return out
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    names = sorted(members)
    rng.shuffle(names)  # the seed decides among groups of one size
    names.sort(key=lambda g: -len(members[g]))
    have = [Counter() for _ in fractions]
    for g in names:
        counts = Counter(labels[i] for i in members[g])
        best = min(
            (s for s in range(len(fractions)) if fractions[s] > 0),
            key=lambda s: (placement_cost(counts, have[s], targets, s), s),
        )
        have[best].update(counts)
        for i in members[g]:
            out[i] = best
    return out


def placement_cost(counts: Counter, have: Counter, targets: dict[str, list[int]], s: int) -> float:
    """How much adding a group (its per-label `counts`) to split s moves the split's per-label counts away from
    their targets (squared error), relative to the targets so that small splits are not starved."""
    delta = 0.0
    for label, c in counts.items():
        t = targets[label][s]
        delta += ((have[label] + c - t) ** 2 - (have[label] - t) ** 2) / max(1.0, t)
    return delta


def split_file(
    path: str | os.PathLike, out: str | os.PathLike, options: SplitOptions, overwrite: bool = False
) -> dict:
    """Write OUT/train, OUT/dev and OUT/test (those with a fraction above 0) in the format of `path`; returns the
    report: per split its example count and per-label counts, plus the groups when grouped."""
    options.validate()
    check_output(out, overwrite=overwrite, inputs=[path])
    given = [f for f in (options.stratify, options.group) if f is not None]
    # Fields given by column number mean a file without a header row, as the task readers read them.
    lf = read_labelled(path, by_number=options.no_header or (bool(given) and all(f.isdigit() for f in given)))
    labels = [label_of(lf, r, options.stratify) for r in lf.records]
    groups = [group_of(lf, r, options.group) for r in lf.records] if options.group else None
    fractions = [1 - options.val - options.test, options.val, options.test]
    chosen = assign(labels, groups, fractions, options.seed)
    parts = {name: [r for r, s in zip(lf.records, chosen) if s == k] for k, name in enumerate(SPLITS)}
    written = [name for k, name in enumerate(SPLITS) if fractions[k] > 0]
    empty = [name for name in written if not parts[name]]
    if empty:
        raise DataError(
            f"{path} has {len(lf.records)} examples{' in ' + str(len(set(groups))) + ' groups' if groups else ''}: "
            f"too few to give the {' and '.join(empty)} split any; lower --val/--test or use a larger file"
        )
    with staged(out) as tmp:
        for name in written:
            (tmp / f"{name}{lf.suffix}").write_text(format_records(lf, parts[name]), encoding="utf-8")
    report = {"input": str(path), "out": str(out), "examples": len(lf.records), "seed": options.seed}
    for k, name in enumerate(SPLITS):
        if name in written:
            entry = {
                "file": str(Path(out) / f"{name}{lf.suffix}"),
                "examples": len(parts[name]),
                "labels": dict(sorted(Counter(labels[i] for i, s in enumerate(chosen) if s == k).items())),
            }
            if groups is not None:
                entry["groups"] = len({groups[i] for i, s in enumerate(chosen) if s == k})
            report[name] = entry
    if not options.stratify:
        for name in written:
            report[name].pop("labels")
    return report


def label_of(lf: LabelledFile, record: Record, name: str | None) -> str:
    if name is None:
        return ""
    if lf.kind == "conll":
        raise ConfigError(
            "--stratify needs one label per example; a CoNLL sentence has a tag per word (split it with --group document)"
        )
    value = field_value(lf, record, name)
    if not value.strip():
        raise DataError(f"{lf.path}:{record.line} has no {name!r} (the --stratify label)")
    return value.strip()


def group_of(lf: LabelledFile, record: Record, name: str) -> str:
    if lf.kind == "conll":
        if name != DOCUMENT:
            raise ConfigError(
                f"a CoNLL file's sentences are grouped by --group {DOCUMENT} (its -DOCSTART- documents)"
            )
        return str(record.document)
    return field_value(lf, record, name)
