"""Built-in corpora extracted from the Python installation itself (no download, no import of stdlib modules)."""

from __future__ import annotations

import inspect
import json
import re
import sys
import sysconfig
from pathlib import Path

import pytest

from lmforge.data import corpus as corpus_mod
from lmforge.data.corpus import BUILTIN_CORPORA, iter_builtin_corpus, write_builtin_corpus
from lmforge.errors import DataError

# Modules the extraction may load itself: the topics data module, text codecs for coding cookies and the
# build data `sysconfig.get_paths()` reads.
ALLOWED_NEW_MODULES = re.compile(r"^(pydoc_data(\..*)?|encodings\..*|_sysconfigdata_.*)$")


@pytest.fixture(scope="module")
def docs_run():
    before = set(sys.modules)
    docs = list(iter_builtin_corpus("stdlib-docs"))
    return docs, set(sys.modules) - before


@pytest.fixture(scope="module")
def docs(docs_run):
    return dict(docs_run[0])


@pytest.fixture(scope="module")
def code():
    return list(iter_builtin_corpus("stdlib-code"))


def test_names_and_descriptions():
    assert set(BUILTIN_CORPORA) == {"stdlib-docs", "stdlib-code"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in BUILTIN_CORPORA.values())


def test_stdlib_docs_has_pydoc_topics(docs):
    from pydoc_data.topics import topics

    assert docs["topic:assert"].rstrip("\n") == topics["assert"].rstrip("\n")
    assert "assert_stmt" in docs["topic:assert"]
    assert sum(name.startswith("topic:") for name in docs) == sum(bool(t.strip()) for t in topics.values())


def test_stdlib_docs_has_docstrings_with_signatures(docs):
    text = docs["module:json"]
    assert text.startswith("Module json\n")
    assert "JSON (JavaScript Object Notation)" in text  # the module docstring
    assert "\njson.dumps(obj, *, skipkeys=False" in text  # a function's header line with its signature
    first_line = inspect.getdoc(json.dumps).splitlines()[0]
    after_header = text.split("\njson.dumps(obj, *, skipkeys=False", 1)[1]
    assert first_line in after_header.split("\njson.", 1)[0]  # its docstring follows its header
    # Methods appear under their class, and package submodules are separate documents.
    assert "\njson.encoder.JSONEncoder.encode(self, o)\n" in docs["module:json.encoder"]
    assert "class json.decoder.JSONDecodeError(ValueError)" in docs["module:json.decoder"]


def test_stdlib_docs_skips_tests_and_site_packages(docs):
    names = [n for n in docs if n.startswith("module:")]
    assert len(names) > 200
    assert not [n for n in names if re.search(r"(^|\.)(test|tests|idle_test|site-packages)(\.|$)", n)]
    assert not [n for n in names if "lmforge" in n or "pytest" in n or "numpy" in n]


def test_stdlib_docs_never_imports_modules(docs_run):
    docs, new_modules = docs_run
    assert docs
    for name in ("antigravity", "this", "turtle", "tkinter", "idlelib", "webbrowser"):
        assert name not in new_modules
    assert {m for m in new_modules if not ALLOWED_NEW_MODULES.match(m)} == set()
    # Their docstrings were extracted all the same, from the source.
    assert dict(docs)["module:antigravity"].startswith("Module antigravity\n")
    assert "antigravity" not in sys.modules and "this" not in sys.modules


def test_docs_order_is_deterministic(docs_run):
    first = docs_run[0]
    names = [name for name, _ in first]
    topics = [n for n in names if n.startswith("topic:")]
    assert names[: len(topics)] == sorted(topics)  # topics first, sorted
    module_names = [n for n in names if n.startswith("module:")]
    assert len(module_names) == len(set(module_names))
    # A second extraction gives the same documents in the same order (checked on the first ~800 kB to
    # keep the test fast; stdlib-code is compared in full below).
    again = list(iter_builtin_corpus("stdlib-docs", max_bytes=800_000))
    assert len(again) > 120
    assert again[:-1] == first[: len(again) - 1]


def test_stdlib_code_is_the_source_files(code):
    files = dict(code)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = files["json/__init__.py"]
    assert "def dumps(" in source
    assert source == (stdlib / "json" / "__init__.py").read_text(encoding="utf-8")
    assert "antigravity.py" in files and "os.py" in files
    names = [name for name, _ in code]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert not [n for n in names if re.search(r"(^|/)(test|tests|idle_test|__pycache__|site-packages)/", n)]
    assert all(n.endswith(".py") for n in names)
    assert list(iter_builtin_corpus("stdlib-code")) == code


@pytest.mark.parametrize("name", ["stdlib-docs", "stdlib-code"])
@pytest.mark.parametrize("max_bytes", [0, 1, 5_000, 123_457])
def test_max_bytes_is_honoured(name, max_bytes, docs, code):
    full = list(docs.items()) if name == "stdlib-docs" else code
    limited = list(iter_builtin_corpus(name, max_bytes=max_bytes))
    total = sum(len(text.encode("utf-8")) for _, text in limited)
    assert total <= max_bytes
    if max_bytes >= 5_000:
        assert total > max_bytes * 0.9  # the budget is used, not just respected
    # The limited corpus is a prefix of the full one; only the last document may be cut.
    assert [n for n, _ in limited] == [n for n, _ in full[: len(limited)]]
    for (_, text), (_, full_text) in zip(limited[:-1], full):
        assert text == full_text
    if limited:
        assert full[len(limited) - 1][1].startswith(limited[-1][1])


def test_write_builtin_corpus(tmp_path, docs):
    out = tmp_path / "corpus"
    result = write_builtin_corpus("stdlib-docs", out, max_bytes=300_000)
    files = sorted(out.iterdir())
    assert result["documents"] == len(files) > 10
    assert result["bytes"] == sum(f.stat().st_size for f in files)
    assert 250_000 < result["bytes"] <= 300_000
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+\.txt", f.name) for f in files)
    # File order is document order and the content is the document, byte for byte.
    expected = list(iter_builtin_corpus("stdlib-docs", max_bytes=300_000))
    assert [f.read_bytes().decode("utf-8") for f in files] == [text for _, text in expected]


def test_write_code_corpus_names_are_safe_and_unique(tmp_path):
    result = write_builtin_corpus("stdlib-code", tmp_path, max_bytes=2_000_000)
    names = [f.name for f in tmp_path.iterdir()]
    assert len(names) == len({n.lower() for n in names}) == result["documents"]
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names)


def test_unknown_corpus_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        iter_builtin_corpus("tinystories")
    assert "stdlib-docs" in str(info.value) and "stdlib-code" in str(info.value)
    with pytest.raises(DataError):
        write_builtin_corpus("tinystories", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="max_bytes"):
        iter_builtin_corpus("stdlib-code", max_bytes=-1)


def test_extraction_rules_on_a_fake_stdlib(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    for skipped in ("test", "tests", "site-packages", "__pycache__", "idlelib/idle_test"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "skipped.py").write_text('"""SKIPPED docstring."""\n', encoding="utf-8")
    sentinel = tmp_path / "imported"
    (root / "sideeffect.py").write_text(
        f'"""Side effects on import."""\nopen({str(sentinel)!r}, "w").close()\n'
        "def f(a, b=2, *args, c, **kw) -> int:\n    'Add things.'\n\n"
        "class K(Base, metaclass=M):\n    '''A class.'''\n    async def m(self):\n        '''A method.'''\n"
        "    def undocumented(self):\n        pass\n",
        encoding="utf-8",
    )
    (root / "broken.py").write_text('"""Broken."""\ndef (:\n', encoding="utf-8")
    (root / "latin.py").write_bytes(b'# -*- coding: latin-1 -*-\n"""Caf\xe9 module."""\n')
    (root / "badbytes.py").write_bytes(b'"""Bad \xff\xfe bytes."""\n')
    (root / "nodoc.py").write_text("x = 1\n", encoding="utf-8")
    (root / "pkg" / "__init__.py").write_text('"""The package."""\n', encoding="utf-8")
    (root / "pkg" / "sub.py").write_text('"""A submodule."""\n', encoding="utf-8")
    monkeypatch.setattr(corpus_mod, "_stdlib_dir", lambda: root)

    docs = {n: t for n, t in iter_builtin_corpus("stdlib-docs") if n.startswith("module:")}
    assert list(docs) == ["module:latin", "module:pkg", "module:pkg.sub", "module:sideeffect"]
    assert not sentinel.exists()  # parsed, never executed
    text = docs["module:sideeffect"]
    assert text.startswith("Module sideeffect\n\n    Side effects on import.\n")
    assert "sideeffect.f(a, b=2, *args, c, **kw) -> int\n\n    Add things.\n" in text
    assert "class sideeffect.K(Base, metaclass=M)\n\n    A class.\n" in text
    assert "async sideeffect.K.m(self)\n\n    A method.\n" in text
    assert "undocumented" not in text
    assert "Café module." in docs["module:latin"]

    code = dict(iter_builtin_corpus("stdlib-code"))
    # Undecodable files are skipped; unparsable ones are still source text for the code corpus.
    assert list(code) == [
        "broken.py",
        "latin.py",
        "nodoc.py",
        "pkg/__init__.py",
        "pkg/sub.py",
        "sideeffect.py",
    ]
    assert "SKIPPED" not in "".join(code.values())
    assert not sentinel.exists()
