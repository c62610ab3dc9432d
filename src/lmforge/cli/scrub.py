"""`lmforge scrub`: personal data and secrets in text files replaced by typed placeholders."""

from __future__ import annotations

from lmforge.cli.common import add_verb, print_json

DESCRIPTION = """\
Replace personal data and secrets in text with typed placeholders, written to one file (the inputs in
order): e-mail addresses <EMAIL>, phone numbers <PHONE> (international +CC formats, North-American and
mainland-Chinese mobiles), IPv4/IPv6 addresses <IP>, payment cards <CARD> (Luhn-checked), IBANs <IBAN>
(mod-97), mainland-Chinese resident IDs <ID> (checksum), US SSNs <SSN>, the user:password of URLs
<CREDENTIALS> and API-key-like secrets <SECRET>. Version numbers, dates, prices, ISBNs and hashes stay.
`lmforge prepare --scrub-pii` runs the same scrubber.
"""

EXAMPLES = """\
  lmforge scrub notes.txt --out notes.clean.txt
  lmforge scrub logs/a.jsonl logs/b.jsonl --out logs.clean.jsonl --json
  cat dump.txt | lmforge scrub - --out dump.clean.txt --types email,phone
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "scrub",
        help="replace PII and secrets in text with placeholders",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files (.txt, .jsonl, ...) or - for stdin")
    p.add_argument("--out", required=True, metavar="FILE", help="the scrubbed text")
    p.add_argument(
        "--types",
        metavar="T1,T2",
        help="only these types (default all): email, phone, ipv4, ipv6, card, iban, id, ssn, credentials, secret",
    )
    p.add_argument(
        "--pii-ner",
        metavar="CKPT",
        help="also replace person, organisation and location names (<PERSON>, <ORG>, <LOCATION>) found by this "
        "lmforge NER checkpoint (finetune --task ner), line by line",
    )
    p.add_argument("--device", default="auto", help="device of the --pii-ner model")
    p.add_argument("--encoding", default="utf-8", help="encoding of the inputs (the output is UTF-8)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


# The NER tags of names (CoNLL's PER/ORG/LOC, OntoNotes' PERSON/GPE...) and the scrubber's types for them.
NAME_TAGS = {"PER": "person", "PERSON": "person", "ORG": "org", "LOC": "location", "GPE": "location"}


def name_finder(ckpt: str, device: str = "auto"):
    """A NameFinder (lmforge.data.scrub) from an lmforge NER checkpoint: the names of each non-blank line."""
    from lmforge.tasks.ner.pipeline import TokenClassificationPipeline

    tagger = TokenClassificationPipeline(ckpt, device=device)

    def find(text: str) -> list[tuple[int, int, str]]:
        lines, starts, pos = [], [], 0
        for line in text.splitlines(keepends=True):
            if line.strip():
                lines.append(line)
                starts.append(pos)
            pos += len(line)
        spans = []
        for start, entities in zip(starts, tagger(lines) if lines else []):
            for e in entities:
                kind = NAME_TAGS.get(e["type"].upper())
                if kind is not None:
                    spans.append((start + e["start"], start + e["end"], kind))
        return spans

    return find


def options_from(types: str | None, pii_ner: str | None = None, device: str = "auto"):
    from lmforge.data.scrub import TYPES, ScrubOptions

    chosen = tuple(t.strip() for t in types.split(",") if t.strip()) if types else TYPES
    options = ScrubOptions(types=chosen, names=name_finder(pii_ner, device) if pii_ner else None)
    options.validate()
    return options


def describe_counts(counts: dict) -> str:
    return ", ".join(f"{n:,} {kind}" for kind, n in counts.items()) or "nothing found"


def run(args) -> int:
    from lmforge.data.scrub import scrub_files

    report = scrub_files(
        args.inputs,
        args.out,
        options_from(args.types, args.pii_ner, args.device),
        encoding=args.encoding,
        overwrite=args.overwrite,
    )
    if args.json:
        print_json(report)
    else:
        print(
            f"scrubbed {report['bytes'] / 1e6:,.1f} MB into {report['out']} in {report['seconds']:.1f}s "
            f"({report['mb_per_s']:,.1f} MB/s): {report['total']:,} replaced ({describe_counts(report['counts'])})"
        )
    return 0
