"""``export()``: a LLaVA checkpoint -> a folder of segmented ONNX graphs + feather.json.

Works in a temporary folder beside the output and moves it into place only when every
graph exported, passed the operator allow-list and onnx.checker, and matched PyTorch in
ONNX Runtime; a failure (an error, a full disk, Ctrl-C, SIGTERM) leaves nothing behind,
and an export killed outright (SIGKILL) is cleaned by the next export into the same
folder. Graphs are exported one at a time and freed, so peak memory is the model plus
about twice its largest graph.

What ``--overwrite`` may replace, and which output paths are refused, is written down in
docs/hardening.md; ``check_output`` enforces it before anything is loaded.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path

from feather.config import PruneConfig
from feather.errors import ConfigError, FeatherError, ModelError, OutputError
from feather.export import onnx_io, validate
from feather.export.chain import SegmentPlan, plan_segments
from feather.export.progress import Steps
from feather.hf import checkpoint as model_mod

MANIFEST_FILE = "feather.json"
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")
"""Output paths under these are refused outright (pseudo file systems and devices)."""
NAME_MAX = 255
_SUFFIX_BYTES = 40  # ".partial-<pid>-<8 random>" and ".old-<pid>-<8 random>" beside the name
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[a-z0-9_]{8}$")

PRECISIONS = ("fp32", "fp16")


def export(
    model: str = model_mod.DEFAULT_MODEL,
    config: PruneConfig | None = None,
    output: str | Path = "feather-export",
    precision: str = "fp32",
    max_seq: int = 2048,
    opset: int = 17,
    overwrite: bool = False,
    quiet: bool = False,
    max_graph_layers: int | None = None,
    target: str = "portable",
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Export ``model`` with ``config`` into ``output``; return the folder.

    ``max_graph_layers`` caps the decoder layers per graph (extra cuts, no pruning there):
    peak export memory is about the model plus 3.5x its largest graph, so a 7B export on
    a machine with twice the weights in RAM wants 8 (see docs/architecture.md). ``target``
    (portable or onnxruntime) is recorded in the manifest and picks the operator allow-list.
    ``image_size`` ``(width, height)``: the one frame size a LLaVA-NeXT export takes (it fixes the
    tile layout, hence every token count); required for NeXT, refused for other checkpoints.

    Raises ``OutputError`` for an output it may not write or replace (see
    ``check_output``) or a file-system failure while writing (full disk, read-only)."""
    config = config or PruneConfig()
    check_options(precision, max_seq, opset, max_graph_layers, target)
    out = check_output(output, overwrite, model)
    import torch

    dtype = torch.float32 if precision == "fp32" else torch.float16
    tiles = _tiles(model_mod.load_config(model), image_size)  # refused before the weights load
    llava, processor = _load(model, dtype)
    geom = model_mod.geometry(llava.config, tiles)
    config.check_layers(geom.num_layers)
    check_max_seq(max_seq, geom.n_image, llava.config)
    plans = plan_segments(config, geom.num_layers, geom.n_image, geom.grid, max_graph_layers)
    if tiles is not None:
        plans = _tiled_plans(plans, config, geom, tiles)
    created: list[Path] = []
    tmp, done = None, False
    try:
        _make_parents(out.parent, created)
        remove_leftovers(out.parent)
        tmp = make_work_folder(out)
        _write_graphs(llava, geom, plans, tmp, precision, opset, quiet, target, tiles)
        _write_manifest(tmp, model, llava, processor, config, geom, plans, precision, opset, max_seq, target, tiles)
        swap_in(tmp, out, overwrite)
        done = True
    except OSError as err:
        raise OutputError(_os_error(err, out)) from None
    finally:
        if not done:
            with _signals_deferred():  # a second Ctrl-C or SIGTERM must not cut the clean-up short
                _clean_up(tmp, created)
    return out


def _tiles(config, image_size):
    """The NeXT tiling for ``image_size`` (None for a square-grid LLaVA); one line for a misuse."""
    if not model_mod.is_next(config):
        if image_size is not None:
            raise ConfigError("image_size: only LLaVA-NeXT checkpoints take a frame size (their tiles depend "
                              "on it); this checkpoint resizes every image to one square")
        return None
    if image_size is None:
        raise ConfigError("image_size: a LLaVA-NeXT export is for one frame size (its tile layout fixes the "
                          "token counts); pass --image-size WIDTHxHEIGHT, your camera's resolution")
    return model_mod.tiles(config, image_size)


def _tiled_plans(plans: list[SegmentPlan], config: PruneConfig, geom, tiles) -> list[SegmentPlan]:
    """Segment token counts on the NeXT layout: kept tokens (``feather.layout``) + the newlines."""
    import dataclasses

    from feather import layout

    lay = layout.tiled(geom.grid, tiles.features[0], tiles.features[1], config.stride)
    layers = [s.layer for s in config.stages]
    counts = dict(zip(layers, lay.static_counts([s.impl for s in config.stages], config.params)))
    out, n = [], geom.n_image
    for p in plans:
        if p.stage is not None:
            n = counts[p.start] + lay.newlines
        out.append(p if p.n_image_in is None else dataclasses.replace(p, n_image_in=n))
    return out


def _clean_up(tmp: Path | None, created: list[Path]) -> None:
    """Remove the work folder and the parent folders this export created."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _write_manifest(folder: Path, model: str, llava, processor, *args) -> None:
    from feather.export import manifest_build  # imports torch: only once a model is loaded

    manifest_build.write(folder, model, llava, processor, *args)


def _load(model: str, dtype):
    """The checkpoint, with a missing or truncated weights file as one ``ModelError`` line."""
    try:
        return model_mod.load(model, dtype)
    except FeatherError:
        raise
    except (OSError, ValueError) as err:
        raise ModelError(f"{model}: cannot load the checkpoint ({_first_line(err)})") from None
    except Exception as err:  # safetensors raises its own SafetensorError for a truncated file
        if type(err).__module__.split(".")[0].startswith("safetensors"):
            raise ModelError(f"{model}: cannot load the weights ({_first_line(err)})") from None
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__


def _os_error(err: OSError, out: Path) -> str:
    where = err.filename or out
    return f"{where}: {err.strerror or _first_line(err)}; nothing was written"


# ---------------------------------------------------------------- the output folder
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


# ---------------------------------------------------------------- options and graphs
TARGETS = ("portable", "onnxruntime")
MIN_TEXT = 16
"""Room a prompt needs beside the image tokens: the template, a short question, one answer token."""


def check_max_seq(max_seq: int, n_image: int, config) -> None:
    """Refuse a ``max_seq`` that cannot hold the image tokens and a short prompt, or that runs
    past the positions the checkpoint was trained for."""
    if max_seq < n_image + MIN_TEXT:
        raise ConfigError(f"max_seq: got {max_seq}, but this model's {n_image} image tokens and a prompt need "
                          f"at least {n_image + MIN_TEXT}")
    limit = getattr(config.text_config, "max_position_embeddings", None)
    if limit and max_seq > limit:
        raise ConfigError(f"max_seq: got {max_seq}, beyond the model's max_position_embeddings {limit}")
    window = getattr(config.text_config, "sliding_window", None)
    if window and getattr(config.text_config, "use_sliding_window", True) is not False and max_seq > window:
        raise ConfigError(f"max_seq: got {max_seq}, beyond the model's sliding_window {window} (the graphs attend "
                          "over the whole prompt, so past the window they would differ from transformers)")


def check_options(precision: str, max_seq: int, opset: int, max_graph_layers: int | None,
                  target: str = "portable") -> None:
    if target not in TARGETS:
        raise ConfigError(f"target: got {target!r}, expected one of {', '.join(TARGETS)}")
    if max_graph_layers is not None and (isinstance(max_graph_layers, bool) or not isinstance(max_graph_layers, int)
                                         or max_graph_layers < 1):
        raise ConfigError(f"max_graph_layers: got {max_graph_layers!r}, expected an integer >= 1")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: got {precision!r}, expected one of {', '.join(PRECISIONS)}")
    if isinstance(max_seq, bool) or not isinstance(max_seq, int) or max_seq < 16:
        raise ConfigError(f"max_seq: got {max_seq!r}, expected an integer >= 16")
    if not 17 <= opset <= 21:
        raise ConfigError(f"opset: got {opset}, expected 17..21")



def _write_graphs(llava, geom, plans: list[SegmentPlan], folder: Path, precision, opset, quiet,
                  target: str = "portable", tiles=None) -> None:
    """Export, check and validate every graph, one at a time; raise all mismatches at once."""
    from feather.export import segments as seg_mod

    dtype = next(llava.parameters()).dtype
    jobs = [("vision.onnx", lambda: _vision_job(llava, dtype, tiles)), ("embed.onnx", lambda: _embed_job(llava))]
    for plan in plans:
        jobs.append((plan.file, lambda p=plan: _segment_job(llava, geom, p, dtype, seg_mod)))
    failures: list[str] = []
    with Steps(len(jobs), quiet) as steps:
        for name, make in jobs:
            module, trace, cases = make()
            path = folder / name
            steps.step(f"export {name}")
            _export_one(module, trace, path, opset)
            onnx_io.check_graph(path, target)
            steps.step(f"validate {name}")
            failures += validate.compare(module, path, cases, precision)
            del module, trace, cases
            gc.collect()
            steps.done()
    validate.raise_failures(failures)


def _export_one(module, trace: tuple, path: Path, opset: int) -> None:
    """Trace into a work folder of its own (the tracer may scatter external-data files
    there), then write the one final graph beside the others and drop the work folder."""
    work = path.parent / f".work-{path.stem}"
    work.mkdir()
    try:
        onnx_io.export_module(module, trace, work / path.name, opset)
        large = onnx_io.weight_bytes(module) >= onnx_io.EXTERNAL_DATA_BYTES
        onnx_io.finalize(work / path.name, path, module.dynamic_axes, onnx_io.output_shapes(module, trace), large)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _vision_job(llava, dtype, tiles=None):
    import torch

    from feather.export.segments import NextVisionGraph, VisionGraph

    size = llava.config.vision_config.image_size
    batch = 1 if tiles is None else 1 + tiles.grid[0] * tiles.grid[1]  # NeXT: the base image, then the tiles
    g = torch.Generator().manual_seed(0)
    make = lambda: torch.randn(batch, 3, size, size, generator=g).to(dtype)  # noqa: E731
    module = VisionGraph(llava) if tiles is None else NextVisionGraph(llava, tiles)
    return module.eval(), (make(),), [validate.Case("other pixels", (make(),))]


def _embed_job(llava):
    import torch

    from feather.export.segments import EmbedGraph

    vocab = llava.config.text_config.vocab_size
    ids = lambda n: torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n))  # noqa: E731
    return EmbedGraph(llava).eval(), (ids(5),), [validate.Case("S=9", (ids(9),))]


def _segment_job(llava, geom, plan: SegmentPlan, dtype, seg_mod):
    module = seg_mod.DecoderSegment(llava, plan.start, plan.end, plan.score_rope, plan.final).eval()
    dims = (geom.hidden, geom.kv_heads, geom.head_dim, dtype)
    return module, validate.trace_args(module, *dims), validate.segment_cases(module, *dims, seed=plan.index)
