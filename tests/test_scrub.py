"""PII scrubbing (lmforge.data.scrub, `lmforge scrub`, `prepare --scrub-pii`): every planted item of every type is
found in a generated file, and a control file of look-alikes comes out unchanged."""

from __future__ import annotations

import json
import random
import string

import pytest

from lmforge.cli.main import main
from lmforge.data.scrub import PLACEHOLDERS, TYPES, Scrubber, ScrubOptions, cn_id_ok, iban_ok, luhn_ok
from lmforge.errors import ConfigError

WORDS = "the report was sent to our team after the meeting and everyone agreed on the plan".split()


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return next(body + d for d in string.digits if luhn_ok(body + d))


def iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def cn_id(rng: random.Random) -> str:
    body = f"110105{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    return next(body + c for c in "0123456789X" if cn_id_ok(body + c))


def grouped(number: str) -> str:
    return " ".join(number[k : k + 4] for k in range(0, len(number), 4))


def planted_items(rng: random.Random) -> list[tuple[str, str]]:
    """(type, text) pairs: several of each type, in the formats the scrubber promises to find."""
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    a = lambda n: "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))  # noqa: E731
    items = []
    for i in range(3):
        items += [
            (
                "email",
                f"{rng.choice(['jane', 'li.wei', 'o_brien'])}{i}@{rng.choice(['example.org', 'mail.co.uk'])}",
            ),
            ("phone", f"+44 20 7946 {d(4)}"),
            ("phone", f"+1 (415) 555-{d(4)}"),
            ("phone", f"1{rng.choice('3456789')}{d(9)}"),
            ("phone", f"+86 13{d(1)} {d(4)} {d(4)}"),
            ("phone", f"({rng.randint(201, 989)}) {rng.randint(200, 989)}-{d(4)}"),
            ("phone", f"{rng.randint(201, 989)}-{rng.randint(200, 989)}-{d(4)}"),
            ("ipv4", ".".join(str(rng.randint(1, 254)) for _ in range(4))),
            ("ipv6", ":".join(f"{rng.randint(1, 65535):x}" for _ in range(8))),
            ("ipv6", f"2001:db8:{rng.randint(1, 65535):x}::{rng.randint(1, 65535):x}"),
            ("card", luhn_complete("4", 16, rng)),
            ("card", grouped(luhn_complete("51", 16, rng))),
            ("card", luhn_complete("37", 15, rng)),
            ("iban", iban("DE", d(18))),
            ("iban", grouped(iban("GB", "WEST" + d(14)))),
            ("id", cn_id(rng)),
            ("ssn", f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"),
            ("credentials", f"https://user{i}:{a(10)}@db.example.com/path"),
            (
                "secret",
                "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
            ),
            ("secret", "ghp_" + a(36)),
            ("secret", f'api_key = "{a(24)}"'),
            ("secret", f"password: {a(12)}"),
        ]
    return items


CONTROL = """\
Release notes for version 2.4.1 (v3.10.12, build 1.0.0.7): released 2023-01-15 at 12:30:45 UTC, 15/01/2023.
Prices: $1,299.99, EUR 45.00, 1.299,00 kr, 3 x 19.95 = 59.85; 12.5% off; 1,000,000 users; 10^9 ops.
ISBN 978-3-16-148410-0 and ISBN 9780306406157, page 123-456, chapter 4.2.1, figure 3-2.
commit e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 (sha256), md5 d41d8cd98f00b204e9800998ecf8427e
uuid 123e4567-e89b-12d3-a456-426614174000; x[::2]; std::vector<int>; a::b::c; time 10:20:30; ratio 16:9
A card-like number with a wrong checksum: 4111 1111 1111 1112; an IBAN with a wrong one: DE89370400440532013001.
An ID with a wrong check digit: 11010519491231002Y; 110105194912310021; order number 1234567890; zip 94103.
SSN-like but invalid: 000-12-3456, 666-12-3456, 900-12-3456; a range 2020-2023; coordinates 48.8566, 2.3522.
def f(x): return x @ W  # matrix product; decorators @property and @dataclass(frozen=True); user@localhost
token_count = 12345678 and the password field is empty; see https://example.com/a:b and http://host:8080/x
"""


def plant(rng: random.Random, items: list[tuple[str, str]]) -> str:
    lines = []
    for _, text in items:
        words = rng.sample(WORDS, 6)
        words.insert(rng.randint(0, 6), text + rng.choice(["", ",", ".", ";"]))
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def expected_counts(items):
    counts = {}
    for kind, _ in items:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert cn_id_ok("11010519491231002X") and not cn_id_ok("110105194912310021")


@pytest.mark.parametrize("seed", range(4))
def test_every_planted_item_is_found_and_the_look_alikes_stay(seed):
    rng = random.Random(seed)
    items = planted_items(rng)
    text = plant(rng, items)
    scrubbed, counts = Scrubber().scrub(text)
    assert counts == expected_counts(items)
    for kind, item in items:
        secret_part = item.split("=")[-1].split(": ")[-1].strip(' "') if kind == "secret" else item
        if kind == "credentials":
            secret_part = item.split("//")[1].split("@")[0]
        assert secret_part not in scrubbed, (kind, item)
    assert "db.example.com" in scrubbed  # a URL keeps its host
    for placeholder in set(PLACEHOLDERS[k] for k, _ in items):
        assert placeholder in scrubbed
    assert Scrubber().scrub(scrubbed) == (scrubbed, {})  # placeholders are not found again

    kept, found = Scrubber().scrub(CONTROL)
    assert found == {} and kept == CONTROL


def test_types_and_streams():
    s = Scrubber(ScrubOptions(types=("email",)))
    assert s.scrub("a@b.org +44 20 7946 0958") == ("<EMAIL> +44 20 7946 0958", {"email": 1})
    with pytest.raises(ConfigError):
        Scrubber(ScrubOptions(types=("fax",)))
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----\n"
    stream = Scrubber().stream()
    cut = key.index("IBAAK")  # pieces end at line breaks; this one inside the key block
    out = stream.feed("x\n" + key[:cut], False) + stream.feed(key[cut:] + "done\n", True)
    assert out == "x\n<SECRET>\ndone\n" and stream.counts == {"secret": 1}


def test_scrub_cli_and_prepare(tmp_path, capsys):
    rng = random.Random(3)
    items = planted_items(rng)
    planted = tmp_path / "planted.jsonl"
    planted.write_text(
        "".join(json.dumps({"text": line}) + "\n" for line in plant(rng, items).splitlines()),
        encoding="utf-8",
    )
    control = tmp_path / "control.txt"
    control.write_text(CONTROL, encoding="utf-8")
    out = tmp_path / "clean.jsonl"
    assert main(["scrub", str(planted), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {k: v for k, v in expected_counts(items).items()} and report["bytes"] > 0
    assert all("text" in json.loads(line) for line in out.read_text(encoding="utf-8").splitlines())
    assert main(["scrub", str(planted), "--out", str(out)]) == 2  # exists: refused without --overwrite
    assert main(["scrub", str(control), "--out", str(tmp_path / "c.txt")]) == 0
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == CONTROL
    assert "nothing found" in capsys.readouterr().out
    assert set(TYPES) >= set(report["counts"])

    data = tmp_path / "data"
    args = ["prepare", str(planted), str(control), "--out", str(data), "--tokenizer", "char"]
    assert main([*args, "--doc-split", "line", "--scrub-pii", "--val-fraction", "0.2"]) == 0
    assert "PII replaced" in capsys.readouterr().out
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["pii"] == dict(sorted(expected_counts(items).items()))
    assert manifest["options"]["scrub_pii"] is True


def test_names_from_an_ner_checkpoint(tmp_path, capsys):
    """--pii-ner: a tiny BiLSTM tagger (trained as tests/tasks/test_ner.py does) finds the made-up names."""
    import lmforge
    from tests.tasks.test_ner import write_conll

    train = write_conll(tmp_path / "train.txt", 300, 0)
    lmforge.finetune("ner", "lstm", train, tmp_path / "ner", epochs=5, batch_size=16, lr=3e-3, progress=False)
    text = tmp_path / "in.txt"
    text.write_text("yesterday she met mr Kalotorvak in New York .\nhe met jane@example.org today .\n")
    out = tmp_path / "out.txt"
    assert (
        main(["scrub", str(text), "--out", str(out), "--pii-ner", str(tmp_path / "ner" / "best"), "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"email": 1, "person": 1, "location": 1}
    assert out.read_text() == "yesterday she met mr <PERSON> in <LOCATION> .\nhe met <EMAIL> today .\n"
    data = tmp_path / "data"
    args = ["prepare", str(text), "--out", str(data), "--tokenizer", "char", "--doc-split", "line"]
    assert (
        main([*args, "--scrub-pii", "--pii-ner", str(tmp_path / "ner" / "best"), "--val-fraction", "0.5"])
        == 0
    )
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["pii"] == {"email": 1, "location": 1, "person": 1}
