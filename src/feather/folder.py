"""Where a command may write its output folder, and the one transaction that writes it (stdlib only).

feather-export and feather-quantize write a new folder; feather-build adds engines to an
existing export's ``engines/``. All three go through ``staged_output`` / ``staged_files``:

    out = check_output(output, overwrite, model)       # early: before anything slow runs
    with staged_output(out, overwrite, model) as work:  # checks again, then:
        ...write into work...                           #   parents made, leftovers removed,
                                                        #   work folder beside the output
    # here the work folder is the output; on any failure or signal, nothing is left

The rules (docs/hardening.md): ``check_output`` refuses system paths, the current and home
folders, anything equal to, inside or containing the checkpoint, and a non-empty folder that
is not a feather export; the missing parent folders are created (and removed again on
failure); the work happens in ``.<name>.partial-<pid>-<random>`` beside the output;
``swap_in`` moves it into place (the old export renamed aside until the new one is in);
``remove_leftovers`` cleans what a run killed outright left behind; the clean-up after an
error, Ctrl-C, SIGTERM or SIGHUP runs with those signals held (``signals_deferred``), so a
second one cannot cut it short. ``write_atomic`` is the same idea for one file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from feather.errors import OutputError
from feather.jsoncodec import MANIFEST_NAME as MANIFEST_FILE
from feather.text import first_line, shown

SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")
"""Output paths under these are refused outright (pseudo file systems and devices)."""
NAME_MAX = 255
_SUFFIX_BYTES = 40  # ".partial-<pid>-<8 random>" and ".old-<pid>-<8 random>" beside the name
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[a-z0-9_]{8}$")
HELD_SIGNALS = tuple(dict.fromkeys((signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM))))
"""What ``signals_deferred`` holds: what a user or a supervisor sends to stop a command."""
TMP_SUFFIX = ".tmp"
"""``write_atomic``'s temporary files are ``.<name>.<random>.tmp`` (readers of a folder skip them)."""


# ---------------------------------------------------------------- the rules
def check_output(output: str | os.PathLike, overwrite: bool, model: str | None = None) -> Path:
    """The absolute output folder, or ``OutputError`` saying why it may not be written.

    Refused: an empty path; a path under /proc, /sys or /dev; the file-system root, the
    current folder, the home folder or any folder containing them; a path equal to,
    containing or inside the checkpoint folder; an existing file; a non-empty folder
    without ``overwrite``; with ``overwrite``, a non-empty folder that is not a feather
    export (no feather.json); a folder name too long for the work folders beside it; a
    path whose nearest existing folder is not writable (missing parents are created)."""
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output).strip():
        raise OutputError("output: empty path; expected a folder name")
    out = _absolute(output)
    _check_not_system(out)
    _check_not_precious(out, model)
    if len(os.fsencode(out.name)) + _SUFFIX_BYTES > NAME_MAX:
        raise OutputError(f"{shown(out)}: folder name too long (at most {NAME_MAX - _SUFFIX_BYTES} bytes)")
    _check_replaceable(out, overwrite)
    parent = next(p for p in out.parents if _lstat(p) is not None)
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"{shown(parent)}: not a writable folder")
    return out


def _absolute(output) -> Path:
    """``output`` made absolute with symlinks resolved (a link to a folder names that folder)."""
    try:
        return Path(os.path.realpath(Path(output).expanduser()))
    except (OSError, ValueError, RuntimeError) as err:
        raise OutputError(f"{shown(output)}: not a usable path ({first_line(err)})") from None


def _check_not_system(out: Path) -> None:
    for root in SYSTEM_FOLDERS:
        if out == Path(root) or Path(root) in out.parents:
            raise OutputError(f"{shown(out)}: under {root}, a system folder; choose another output")


def _check_not_precious(out: Path, model: str | None) -> None:
    """Never the root, the current folder, home, or a folder that holds one of them; never
    overlapping the checkpoint folder."""
    for name, folder in (("the file-system root", Path("/")), ("the current folder", Path.cwd()),
                         ("your home folder", Path.home())):
        folder = Path(os.path.realpath(folder))
        if out == folder or out in folder.parents:
            raise OutputError(f"{shown(out)}: is or contains {name}; choose a new folder for the export")
    ckpt = _checkpoint_folder(model)
    if ckpt is not None and (out == ckpt or out in ckpt.parents or ckpt in out.parents):
        raise OutputError(f"{shown(out)}: overlaps the checkpoint folder {shown(ckpt)}; choose another output")


def _checkpoint_folder(model: str | None) -> Path | None:
    """The local checkpoint folder ``model`` names, if any (HF ids are not folders)."""
    if not model:
        return None
    if model == "tiny":
        from feather.tiny import default_cache_dir

        return Path(os.path.realpath(default_cache_dir()))
    with contextlib.suppress(OSError, ValueError):
        if os.path.isdir(os.path.expanduser(model)):
            return Path(os.path.realpath(os.path.expanduser(model)))
    return None


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """An existing ``out`` must be a folder, and empty unless ``overwrite``; with
    ``overwrite``, only an empty folder or a feather export (feather.json) is replaced."""
    st = _lstat(out)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{shown(out)}: exists and is not a folder")
    try:
        empty = not any(os.scandir(out))
    except OSError as err:
        raise OutputError(f"{shown(out)}: cannot list it ({err.strerror})") from None
    if empty:
        return
    if not overwrite:
        raise OutputError(f"{shown(out)}: folder is not empty; pass --overwrite to replace it")
    if not (out / MANIFEST_FILE).is_file():
        raise OutputError(f"{shown(out)}: not a feather export (no {MANIFEST_FILE}); --overwrite replaces "
                          "only an export folder or an empty one")


def _lstat(path: Path) -> os.stat_result | None:
    """``os.lstat(path)``, None when it does not exist, ``OutputError`` for any other failure
    (a name too long, a permission denied on the way)."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise OutputError(f"{shown(path)}: {err.strerror}") from None


# ---------------------------------------------------------------- the transaction
@contextlib.contextmanager
def staged_output(output: str | os.PathLike, overwrite: bool = False, model: str | None = None) -> Iterator[Path]:
    """Write a new output folder: yields the work folder, which becomes ``output`` when the
    block ends normally.

    On entry: ``check_output`` (again: the caller checks early, before anything slow, and the
    folder may have changed since), the missing parent folders are created, leftovers of
    killed runs beside the output are removed, the work folder is made beside it. On a
    normal exit: ``swap_in``. On any exception, Ctrl-C, SIGTERM or SIGHUP: the work folder
    and the parents made here are removed, with those signals held, and the exception goes
    on; an ``OSError`` (full disk, read-only) becomes one ``OutputError`` line ending in
    "nothing was written"."""
    out = check_output(output, overwrite, model)
    with _transaction(out.parent, out, lambda work: swap_in(work, out, overwrite)) as work:
        yield work


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike, commit: Callable[[Path], None]) -> Iterator[Path]:
    """Add files to ``folder`` (feather-build's ``engines/``): yields a work folder made
    *inside* ``folder`` (``folder`` and its missing parents created first, leftovers there
    removed); when the block ends normally ``commit(work)`` moves the finished files into
    place, with SIGINT, SIGTERM and SIGHUP held, and the work folder is removed. Files in
    ``folder`` that the commit does not replace are left alone. A failure or a signal before
    the commit removes the work folder and any folder made here, like ``staged_output``."""
    folder = Path(folder)
    st = _lstat(folder)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{shown(folder)}: exists and is not a folder")

    def finish(work: Path) -> None:
        with signals_deferred():
            commit(work)
            shutil.rmtree(work, ignore_errors=True)

    with _transaction(folder, folder, finish) as work:
        yield work


@contextlib.contextmanager
def _transaction(home: Path, out: Path, commit: Callable[[Path], None]) -> Iterator[Path]:
    """Parents of ``home`` made, leftovers in ``home`` removed, a work folder for ``out`` made
    in ``home``; then the block; then ``commit(work)``, or the clean-up."""
    created: list[Path] = []
    work, done = None, False
    try:
        _make_parents(home, created)
        remove_leftovers(home)
        work = make_work_folder(out, home)
        yield work
        commit(work)
        done = True
    except OSError as err:
        raise OutputError(f"{shown(err.filename or out)}: {err.strerror or first_line(err)}; "
                          "nothing was written") from None
    finally:
        if not done:
            with signals_deferred():  # a second Ctrl-C or SIGTERM must not cut the clean-up short
                _clean_up(work, created)


def _clean_up(work: Path | None, created: list[Path]) -> None:
    """Remove the work folder and the parent folders this run created (innermost first)."""
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _make_parents(folder: Path, created: list[Path]) -> None:
    """mkdir -p ``folder``, appending each folder it creates to ``created``, outermost first
    (one another process made meanwhile is used, not recorded)."""
    missing = [p for p in [folder, *folder.parents] if _lstat(p) is None][::-1]
    for p in missing:
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise
            continue
        created.append(p)


def make_work_folder(out: Path, home: Path | None = None) -> Path:
    """``.<name>.partial-<pid>-<random>`` in ``home`` (default: beside ``out``), with the mode
    a plain mkdir would give (mkdtemp makes 0700; the files inside follow the umask, so the
    folder does too)."""
    home = out.parent if home is None else home
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=home))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def umask() -> int:
    """The process umask (``os.umask`` can only be read by setting it: set and put back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def swap_in(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished export into place. An existing export is renamed aside first and
    deleted only once the new one is in place, so a failure half-way leaves it intact."""
    with signals_deferred():
        old = None
        if _lstat(out) is not None:
            _check_replaceable(out, overwrite)  # again: it may have changed during the export
            old = Path(tempfile.mktemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(parent: Path) -> list[Path]:
    """Clean what runs killed outright (SIGKILL, power loss) left in ``parent``: work
    folders ``.<name>.partial-<pid>-*`` and set-aside exports ``.<name>.old-<pid>-*`` whose
    process is gone. A set-aside export whose ``<name>`` no longer exists is put back (the
    kill fell between the two renames); otherwise it is deleted. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if m is None or not entry.is_dir(follow_symlinks=False) or _alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        home = parent / m["name"]
        if m["kind"] == "old":
            if not (path / MANIFEST_FILE).is_file():
                continue  # not an export we set aside: leave it alone
            if _lstat(home) is None:
                with contextlib.suppress(OSError):
                    os.rename(path, home)
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a pid: not ours to judge
    return True


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver them to the
    handlers that were in place (a CLI's raises ``Interrupted`` right there).

    The handlers are swapped for one that only records, rather than the signals blocked:
    blocking (``pthread_sigmask``) holds them for this thread only, and once ONNX Runtime
    or torch have started their thread pools another thread takes the signal and Python
    runs the handler in the main thread anyway, in the middle of the block. Python runs
    handlers in the main thread only, so a block in another thread cannot be interrupted
    and needs nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    try:
        for sig in HELD_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through ``.<name>.<random>.tmp`` beside it,
    flushed to disk and renamed over ``path``: a reader sees the old file or the new one,
    never half of one, and a failure leaves no temporary file. The file gets the mode a
    plain ``open`` would give (``0666 & ~umask``; mkstemp makes 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
