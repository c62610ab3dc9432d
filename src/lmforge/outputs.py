"""Output paths: the one rule every command that writes follows, and the one way it writes.

The rule, checked by `check_output` before a command does any work:

- a path that does not exist is created (its nearest existing parent must be a folder that can be written);
- an empty folder counts as new;
- a path that is the command's own previous output is the command's to continue or replace (a run directory
  that `--resume` continues, `checkpoint.require_new_run_dir` / `resume_point`; the trainer's own `ckpt-N`);
- anything else that exists is refused in one line, unless the command has `--overwrite` and it was given;
- even with `--overwrite`, never a path that is, or holds, one of the command's inputs (quantizing RUN/best into
  RUN would delete the checkpoint being read).

The writing, `staged`: a new output is written at a hidden temporary sibling (`.tmp-NAME-PID`), made durable and
renamed into place; an output it replaces is first moved aside (`.old-NAME-PID`) and deleted only once the new one
is in place. A failure at any point leaves the old output or the new one, never a mix, and no temporary files; an
OSError raised while writing names the file at its final path, not the temporary one.

`describe_os_error` turns an OSError (disk full, permission denied, a file where a folder should be...) into the
one sentence the CLI prints.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.errors import LmforgeError, OutputError


def staging_path(dest: str | os.PathLike, tag: str = "tmp") -> Path:
    """The hidden sibling a new `dest` is written at (tag "tmp") or an old one is moved aside to (tag "old")."""
    dest = Path(dest)
    return dest.parent / f".{tag}-{dest.name}-{os.getpid()}"


def _holds(folder: Path, path: Path) -> bool:
    return folder == path or folder in path.parents


def check_inputs(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None],
    flag: str = "--out",
    error: type[LmforgeError] = OutputError,
) -> None:
    """Refuse an output path that is, or holds, one of the inputs (stdin "-" and None are skipped)."""
    out_real = Path(out).resolve()
    for given in inputs:
        if given is None or os.fspath(given) == "-":
            continue
        if _holds(out_real, Path(given).resolve()):
            raise error(
                f"input {given} is inside {out}, which --overwrite would delete; choose another {flag}"
            )


def check_output(
    path: str | os.PathLike,
    *,
    folder: bool = True,
    overwrite: bool | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
    own: Callable[[Path], bool] | None = None,
    flag: str = "--out",
    error: type[LmforgeError] = OutputError,
) -> Path:
    """Check, before any work, that a command may write its output (a folder, or a file with folder=False) at
    `path`; returns it as a Path or raises `error` with one sentence.

    overwrite: None when the command has no --overwrite flag, else the flag's value. inputs: what the command reads
    (an existing output holding one of them is refused even with --overwrite). own(path): True when an existing
    path is the command's own previous output, which it may continue or replace without --overwrite.
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        if folder and not p.is_dir():
            raise error(f"{flag} {p} is an existing file; give the path of a folder to create")
        if not folder and p.is_dir():
            raise error(f"{flag} {p} is a folder; give the path of a file to write")
        if not (folder and not any(p.iterdir())) and not (own is not None and own(p)):
            if overwrite is not None:  # say why --overwrite would not do either
                check_inputs(p, inputs, flag, error)
            if not overwrite:
                how = "pass --overwrite to replace it, or " if overwrite is not None else ""
                kind = "already exists and is not empty" if folder else "already exists"
                raise error(f"{p} {kind}; {how}choose another {flag}")
    _check_writable(p, flag, error)
    return p


def _check_writable(p: Path, flag: str, error: type[LmforgeError]) -> None:
    """The nearest existing ancestor of `p` must be a folder we may write in (a new output is written next to
    `p`, then renamed), and so must `p` itself when it is an existing folder."""
    base = p.parent
    while not base.exists() and not base.is_symlink() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise error(f"cannot create {flag} {p}: {base} is a file, not a folder")
    for folder in (base, p) if p.is_dir() else (base,):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise error(
                f"cannot write {flag} {p}: permission denied in {folder}; choose a folder you can write to"
            )


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable; best effort where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete a file or folder tree if it is there (best effort: what is left is a hidden .tmp-/.old- name)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def commit(tmp: Path, dest: Path) -> Path:
    """Rename the complete `tmp` into place at `dest`; an existing `dest` is moved aside first and deleted last
    (if the final rename fails, it is put back)."""
    if tmp.is_file() and (dest.is_file() or not dest.exists()):
        os.replace(tmp, dest)  # a file replaces a file atomically
    elif dest.exists() or dest.is_symlink():
        old = staging_path(dest, "old")
        remove(old)
        os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(old, dest)
            raise
        remove(old)
    else:
        os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return dest


@contextmanager
def staged(dest: str | os.PathLike, folder: bool = True, tmp: Path | None = None) -> Iterator[Path]:
    """Write an output atomically: the block writes into the yielded temporary path (a fresh empty folder, or
    with folder=False the path of a file to create), which replaces `dest` when the block succeeds and is removed
    when it fails. An OSError about a file inside the temporary path is re-raised naming the final path."""
    dest = Path(dest)
    tmp = tmp or staging_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove(tmp)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if folder:
            fsync_dir(tmp)
        commit(tmp, dest)
    except OSError as exc:
        remove(tmp)
        if exc.filename is None and exc.errno is not None:  # a failed write() names no file: name the output
            exc.filename = str(dest)
        for attr in ("filename", "filename2"):
            name = getattr(exc, attr, None)
            if isinstance(name, (str, os.PathLike)) and _holds(tmp, Path(name)):
                setattr(
                    exc, attr, str(dest / Path(name).relative_to(tmp)) if Path(name) != tmp else str(dest)
                )
        raise
    except BaseException:
        remove(tmp)
        raise


# ---- one sentence for an OSError ---------------------------------------------------------------------------

_CAUSES = {
    errno.ENOSPC: "no space left on the device; free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write somewhere else",
    errno.EFBIG: "the file is too large for this file system; write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "permission denied; choose a path you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a path you may write to, or fix its permissions",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "it already exists; choose another path",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EIO: "an input/output error of the device",
}
_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def os_error_from(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """The OSError behind a native library's error message that ends in `(os error N)` (safetensors, tokenizers),
    or None when the message names no OS error."""
    text = str(exc)
    marker = text.rfind("(os error ")
    if marker < 0:
        return None
    code = text[marker + len("(os error ") :].split(")", 1)[0]
    if not code.isdigit():
        return None
    return OSError(int(code), os.strerror(int(code)), os.fspath(path))


def describe_os_error(exc: OSError) -> str:
    """One sentence naming the path and the cause of an OSError, e.g. "cannot write run/ckpt-0000100/
    train_state.pt: no space left on the device; free some space or write somewhere else"."""
    cause = _CAUSES.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__).lower()
    names = [os.fspath(n) for n in (exc.filename, exc.filename2) if n is not None]
    verb = "cannot write" if exc.errno in _WRITING else "cannot use"
    if not names:
        return f"{verb} a file: {cause}"
    return f"{verb} {' -> '.join(names)}: {cause}"
