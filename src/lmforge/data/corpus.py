"""Built-in corpora: text every Python installation carries, so the quickstart needs no download and no file.

- `stdlib-docs`: the documentation topics of `pydoc_data.topics` (the text behind `help("assert")`), then,
  one document per standard-library module, the docstrings of the module, its classes and its functions.
- `stdlib-code`: the source of the standard library's `.py` files, one document per file.

Docstrings are extracted by parsing the source files with `ast`; no standard-library module is ever imported
(some have side effects on import: `antigravity` opens a web browser, `this` prints a poem).
"""

from __future__ import annotations

import ast
import io
import os
import re
import sysconfig
import tokenize
import warnings
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import DataError

BUILTIN_CORPORA: dict[str, str] = {
    "stdlib-docs": "Python's documentation topics and the docstrings of its standard library (English prose)",
    "stdlib-code": "the source code of Python's standard library (.py files)",
}

# Folders of the standard library that hold no library code: tests, installed packages, build files.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
_MAX_HEADER_CHARS = 200


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _skip_dir(name: str) -> bool:
    # config-3.11-x86_64-linux-gnu/ holds the build's Makefile and python-config.py, not library code.
    return name in _SKIP_DIRS or name.startswith("config-") or name.startswith(".")


def _stdlib_files() -> list[tuple[str, Path]]:
    """(POSIX path relative to the stdlib folder, absolute path) of every library `.py` file, sorted."""
    root = _stdlib_dir()
    if not root.is_dir():
        return []
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skip_dir(d))
        for name in filenames:
            # _sysconfigdata_*.py is generated at build time (a dict of build variables), not library code.
            if name.endswith(".py") and not name.startswith("_sysconfigdata_"):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0].split("/"))
    return found


def _read_source(path: Path) -> str | None:
    """The text of a Python source file in its declared encoding (PEP 263), or None if it cannot be read."""
    try:
        data = path.read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (OSError, SyntaxError, LookupError, UnicodeDecodeError):
        return None


def _module_name(rel: str) -> str:
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _header(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_HEADER_CHARS else text[: _MAX_HEADER_CHARS - 3] + "..."


def _indent(text: str) -> str:
    return "\n".join("    " + line if line.strip() else "" for line in text.splitlines())


def _definitions(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
    """(header line, docstring) of the classes and functions defined in `body`, methods included, in order."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                sig = f"{prefix}{node.name}({ast.unparse(node.args)})"
                if node.returns is not None:
                    sig += f" -> {ast.unparse(node.returns)}"
                if isinstance(node, ast.AsyncFunctionDef):
                    sig = "async " + sig
                yield _header(sig), doc
        elif isinstance(node, ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc:
                bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
                head = f"class {prefix}{node.name}" + (f"({', '.join(bases)})" if bases else "")
                yield _header(head), doc
            yield from _definitions(node.body, f"{prefix}{node.name}.")


def _module_docs(module: str, source: str) -> str | None:
    """One readable document: the module docstring, then each documented class/function under its signature."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning: invalid escape sequence
            tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    module_doc = ast.get_docstring(tree)
    parts = [f"{head}\n\n{_indent(doc)}" for head, doc in _definitions(tree.body, f"{module}.")]
    if not module_doc and not parts:
        return None
    parts.insert(0, f"Module {module}" + (f"\n\n{_indent(module_doc)}" if module_doc else ""))
    return "\n\n".join(parts) + "\n"


def _topics() -> Iterator[tuple[str, str]]:
    try:
        # A data-only module (one dict of strings): importing it runs no library code.
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out of the minimal Python package
        return
    for key in sorted(topics):
        text = topics[key]
        if isinstance(text, str) and text.strip():
            yield f"topic:{key}", text if text.endswith("\n") else text + "\n"


def _iter_stdlib_docs() -> Iterator[tuple[str, str]]:
    yield from _topics()
    for rel, path in _stdlib_files():
        source = _read_source(path)
        if source is None:
            continue
        module = _module_name(rel)
        text = _module_docs(module, source)
        if text:
            yield f"module:{module}", text


def _iter_stdlib_code() -> Iterator[tuple[str, str]]:
    for rel, path in _stdlib_files():
        source = _read_source(path)
        if source and source.strip():
            yield rel, source


_GENERATORS = {"stdlib-docs": _iter_stdlib_docs, "stdlib-code": _iter_stdlib_code}


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` within `max_bytes` UTF-8 bytes, cut after a newline when there is one."""
    cut = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    newline = cut.rfind("\n")
    return cut[: newline + 1] if newline >= 0 else cut


def iter_builtin_corpus(name: str, max_bytes: int | None = None) -> Iterator[tuple[str, str]]:
    """Yield (document name, text) of a built-in corpus, in a deterministic order (sorted paths).

    With `max_bytes`, the UTF-8 size of all texts together stays within it: the document that would go over
    is cut (after its last whole line that fits) and the iteration stops.
    """
    if name not in _GENERATORS:
        raise DataError(f"unknown built-in corpus {name!r}; choose one of {', '.join(BUILTIN_CORPORA)}")
    if max_bytes is not None and max_bytes < 0:
        raise DataError(f"max_bytes must be 0 or more, not {max_bytes}")
    return _limited(_GENERATORS[name](), max_bytes)


def _limited(docs: Iterator[tuple[str, str]], max_bytes: int | None) -> Iterator[tuple[str, str]]:
    left = max_bytes
    for doc_name, text in docs:
        if left is None:
            yield doc_name, text
            continue
        size = len(text.encode("utf-8"))
        if size > left:
            text = _truncate_utf8(text, left)
            if text:
                yield doc_name, text
            return
        yield doc_name, text
        left -= size
        if left == 0:
            return


def _safe_filename(index: int, doc_name: str) -> str:
    # The index keeps the order, makes names unique even on case-insensitive file systems and keeps
    # them from starting with a dot.
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", doc_name) or "document"
    return f"{index:05d}-{stem[:100]}.txt"


def write_builtin_corpus(name: str, folder: str | os.PathLike, max_bytes: int | None = None) -> dict:
    """Write one UTF-8 `.txt` file per document of a built-in corpus into `folder` (created if needed).

    Returns {"documents": number of files written, "bytes": their total size}. Files already in the folder
    are left alone (files of an earlier run with the same names are overwritten).
    """
    docs = iter_builtin_corpus(name, max_bytes)  # checks the name before anything is created
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the corpus folder {out} ({exc.strerror or exc})") from None
    documents = total = 0
    for doc_name, text in docs:
        data = text.encode("utf-8")
        (out / _safe_filename(documents, doc_name)).write_bytes(data)
        documents += 1
        total += len(data)
    return {"documents": documents, "bytes": total}
