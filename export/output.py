"""Where an export (or a quantized folder) may be written, and how it gets there.

The rules (docs/hardening.md): ``check_output`` refuses system paths, the current and home
folders, anything equal to, inside or containing the checkpoint, and a non-empty folder that
is not a feather export; the work happens in ``make_work_folder``'s temporary folder beside
the output, ``swap_in`` moves it into place (the old export renamed aside until the new one
is in), and ``remove_leftovers`` cleans what an export killed outright left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path

from feather.errors import OutputError

MANIFEST_FILE = "feather.json"
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")
"""Output paths under these are refused outright (pseudo file systems and devices)."""
NAME_MAX = 255
_SUFFIX_BYTES = 40  # ".partial-<pid>-<8 random>" and ".old-<pid>-<8 random>" beside the name
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[a-z0-9_]{8}$")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__


def check_output(output: str | os.PathLike, overwrite: bool, model: str | None = None) -> Path:
    """The absolute output folder, or ``OutputError`` saying why it may not be written.

    Refused: an empty path; a path under /proc, /sys or /dev; the file-system root, the
    current folder, the home folder or any folder containing them; a path equal to,
    containing or inside the checkpoint folder; an existing file; a non-empty folder
    without ``overwrite``; with ``overwrite``, a non-empty folder that is not a feather
    export (no feather.json); a folder name too long for the work folders beside it."""
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output).strip():
        raise OutputError("output: empty path; expected a folder name")
    out = _absolute(output)
    _check_not_system(out)
    _check_not_precious(out, model)
    if len(os.fsencode(out.name)) + _SUFFIX_BYTES > NAME_MAX:
        raise OutputError(f"{_shown(out)}: folder name too long (at most {NAME_MAX - _SUFFIX_BYTES} bytes)")
    _check_replaceable(out, overwrite)
    parent = next(p for p in out.parents if _lstat(p) is not None)
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"{_shown(parent)}: not a writable folder")
    return out


def _absolute(output) -> Path:
    """``output`` made absolute with symlinks resolved (a link to a folder names that folder)."""
    try:
        return Path(os.path.realpath(Path(output).expanduser()))
    except (OSError, ValueError, RuntimeError) as err:
        raise OutputError(f"{_shown(output)}: not a usable path ({_first_line(err)})") from None


def _check_not_system(out: Path) -> None:
    for root in SYSTEM_FOLDERS:
        if out == Path(root) or Path(root) in out.parents:
            raise OutputError(f"{_shown(out)}: under {root}, a system folder; choose another output")


def _check_not_precious(out: Path, model: str | None) -> None:
    """Never the root, the current folder, home, or a folder that holds one of them; never
    overlapping the checkpoint folder."""
    for name, folder in (("the file-system root", Path("/")), ("the current folder", Path.cwd()),
                         ("your home folder", Path.home())):
        folder = Path(os.path.realpath(folder))
        if out == folder or out in folder.parents:
            raise OutputError(f"{_shown(out)}: is or contains {name}; choose a new folder for the export")
    ckpt = _checkpoint_folder(model)
    if ckpt is not None and (out == ckpt or out in ckpt.parents or ckpt in out.parents):
        raise OutputError(f"{_shown(out)}: overlaps the checkpoint folder {_shown(ckpt)}; choose another output")


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
        raise OutputError(f"{_shown(out)}: exists and is not a folder")
    try:
        empty = not any(os.scandir(out))
    except OSError as err:
        raise OutputError(f"{_shown(out)}: cannot list it ({err.strerror})") from None
    if empty:
        return
    if not overwrite:
        raise OutputError(f"{_shown(out)}: folder is not empty; pass --overwrite to replace it")
    if not (out / MANIFEST_FILE).is_file():
        raise OutputError(f"{_shown(out)}: not a feather export (no {MANIFEST_FILE}); --overwrite replaces "
                          "only an export folder or an empty one")


def _lstat(path: Path) -> os.stat_result | None:
    """``os.lstat(path)``, None when it does not exist, ``OutputError`` for any other failure
    (a name too long, a permission denied on the way)."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise OutputError(f"{_shown(path)}: {err.strerror}") from None


def _shown(path) -> str:
    text = os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # no newline splits the line


def _make_parents(folder: Path, created: list[Path]) -> None:
    """mkdir -p ``folder``, appending each folder it creates to ``created``, outermost first."""
    missing = [p for p in [folder, *folder.parents] if _lstat(p) is None][::-1]
    for p in missing:
        p.mkdir()
        created.append(p)


def make_work_folder(out: Path) -> Path:
    """``.<name>.partial-<pid>-<random>`` beside ``out``, with the mode a plain mkdir would
    give (mkdtemp makes 0700; the files inside follow the umask, so the folder does too)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def swap_in(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished export into place. An existing export is renamed aside first and
    deleted only once the new one is in place, so a failure half-way leaves it intact."""
    with _signals_deferred():
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
    """Clean what exports killed outright (SIGKILL, power loss) left in ``parent``: work
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
def _signals_deferred():
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends (then they are delivered)."""
    signals = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
