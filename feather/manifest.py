"""``feather.json``: the one contract between the exporter and the runtime (which reads nothing else).

Typed, strict, versioned: each section is a dataclass decoded by a small type-hint-driven
codec, so an unknown key, missing key or wrong type fails with its JSON path
(``feather.json: segments[1].inputs.hidden: expected str, got int``). Stdlib only, so the
runtime imports it without torch; hand-written because pydantic / dacite / cattrs would be
a new runtime dependency for ~60 lines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from feather.config import MODES
from feather.errors import ManifestError
from feather.jsoncodec import MANIFEST_NAME, fail, from_json, join_path, to_json

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16")
_CHUNK = 1 << 20  # sha256 reads 1 MiB at a time
_TMP_PREFIX, _TMP_SUFFIX = f".{MANIFEST_NAME}.", ".tmp"

@dataclass
class Source:
    """The checkpoint the export came from (for provenance; the runtime never loads it)."""

    model: str
    revision: str | None = None


@dataclass
class Dims:
    """Model dimensions: L, d, H, KV heads, head_dim, vocab, MLP width, image tokens, grid G."""

    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    n_image: int
    grid: int
    vision_hidden: int


@dataclass
class ImageSpec:
    """Image preprocessing; ``size`` is the crop as [height, width]."""

    size: list[int]
    resize_shortest_edge: int | None
    resample: str
    center_crop: bool
    rescale_factor: float
    normalize: bool
    mean: list[float]
    std: list[float]
    convert_rgb: bool = True


@dataclass
class PromptSpec:
    """Prompt template holding ``{prompt}`` and the image token; fill it with str.replace."""

    template: str
    image_token: str
    image_token_id: int
    n_image_tokens: int
    add_special_tokens: bool = True


@dataclass
class TokenSpec:
    """Special token ids."""

    eos: list[int]
    pad: int | None = None
    bos: int | None = None


@dataclass
class StageSpec:
    """One pruning stage: at ``layer``, keep ``keep`` image tokens by ``rule``."""

    layer: int
    rule: str
    rope: bool
    keep: int


@dataclass
class PruningSpec:
    """The pruning plan (criterion, K list, ratio R, stride, mode, stages)."""

    criterion: str
    K: list[int]
    ratio: float
    stride: int
    mode: str
    stages: list[StageSpec]


@dataclass
class AxisRange:
    """A dynamic axis' min / opt / max (TensorRT optimisation profile)."""

    min: int
    opt: int
    max: int


@dataclass
class KVNames:
    """Per-layer KV tensor name templates, each with one ``%d`` (e.g. ``past.%d.key``)."""

    past_key: str
    past_value: str
    present_key: str
    present_value: str

    def names(self, layer: int) -> tuple[str, ...]:
        """(past_key, past_value, present_key, present_value) names for ``layer``."""
        return tuple(getattr(self, f.name) % layer for f in dataclasses.fields(self))


@dataclass
class GraphSpec:
    """One ONNX graph: file, tensor names, dynamic axes; segments add layers [start, end) and KV."""

    file: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    axes: dict[str, AxisRange] = field(default_factory=dict)
    layers: list[int] | None = None
    kv: KVNames | None = None
    n_image_in: int | None = None  # image tokens the segment holds after its gather (static mode)


@dataclass
class Tolerance:
    """Max abs differences the export was validated to (ONNX vs PyTorch)."""

    logits_abs: float
    hidden_abs: float


@dataclass
class Manifest:
    """Everything the runtime needs, as written to ``feather.json``."""

    schema_version: int
    producer: str
    source: Source
    dims: Dims
    image: ImageSpec
    prompt: PromptSpec
    tokens: TokenSpec
    tokenizer: str
    pruning: PruningSpec
    vision: GraphSpec
    embed: GraphSpec
    segments: list[GraphSpec]
    precision: str
    opset: int
    max_seq: int
    tolerance: Tolerance
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256 hex

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Decode and validate a parsed ``feather.json``; raises ``ManifestError``."""
        # before decoding: a newer schema may have keys this version calls unknown
        if type(data) is dict and type(data.get("schema_version")) is int:
            _check_version(data["schema_version"])
        manifest = from_json(cls, data)  # the module-level codec
        manifest.validate()
        return manifest

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (field order kept)."""
        return to_json(self)  # the module-level codec

    def validate(self) -> None:
        """Check what types cannot: choices, segment coverage, names; raises ``ManifestError``."""
        _check_version(self.schema_version)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("pruning.mode", self.pruning.mode, MODES)
        _check_len("image.size", self.image.size, 2, "[height, width]")
        _check_prompt(self.prompt)
        _check_segments(self.segments, self.dims.num_layers)
        for path, graph in self.graphs_with_paths():
            _check_graph(path, graph)
        _check_name("tokenizer", self.tokenizer)
        for name in self.files:
            _check_name(join_path("files", name), name)

    def graphs_with_paths(self) -> list[tuple[str, GraphSpec]]:
        """Every graph in run order with its JSON path: vision, embed, segments[i]."""
        segs = [(f"segments[{i}]", s) for i, s in enumerate(self.segments)]
        return [("vision", self.vision), ("embed", self.embed), *segs]

    def segment_for_layer(self, i: int) -> GraphSpec:
        """The segment whose half-open ``layers`` range holds decoder layer ``i``."""
        for seg in self.segments:
            if seg.layers is not None and seg.layers[0] <= i < seg.layers[1]:
                return seg
        raise IndexError(f"no segment holds layer {i} (the model has {self.dims.num_layers})")

    def path(self, folder: str | os.PathLike, name: str) -> Path:
        """``folder / name`` for a file named in the manifest; refuses '..' and absolute names."""
        if not _plain_name(name):
            raise ManifestError(f"{name!r} {_BAD_NAME}")
        return Path(folder) / name


def _check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        fail(
            "schema_version",
            f"{version} is newer than this feather-vlm reads ({SCHEMA_VERSION}); upgrade feather-vlm",
        )
    if version != SCHEMA_VERSION:
        fail("schema_version", f"{version} is not a valid version (this feather-vlm reads {SCHEMA_VERSION})")


def _check_choice(path: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        fail(path, f"{value!r} is not one of {', '.join(allowed)}")


def _check_len(path: str, values: list, n: int, what: str) -> None:
    if len(values) != n:
        fail(path, f"expected {what}, got {len(values)} values")


def _check_prompt(prompt: PromptSpec) -> None:
    for needle in ("{prompt}", prompt.image_token):
        if not needle or needle not in prompt.template:
            fail("prompt.template", f"must contain {needle!r}")


def _check_segments(segments: list[GraphSpec], num_layers: int) -> None:
    if not segments:
        fail("segments", "must list at least one segment")
    start = 0
    for i, seg in enumerate(segments):
        path = f"segments[{i}].layers"
        if seg.layers is None:
            fail(path, "missing (every segment needs its [start, end) layer range)")
        _check_len(path, seg.layers, 2, "[start, end]")
        lo, hi = seg.layers
        if lo != start:
            fail(path, f"starts at {lo}, expected {start} (segments must cover the layers contiguously)")
        if hi <= lo:
            fail(path, f"[{lo}, {hi}) holds no layer")
        start = hi
    if start != num_layers:
        fail(
            f"segments[{len(segments) - 1}].layers",
            f"ends at {start}, expected dims.num_layers = {num_layers}",
        )


def _check_graph(path: str, graph: GraphSpec) -> None:
    _check_name(f"{path}.file", graph.file)
    if graph.layers is not None:
        _check_len(f"{path}.layers", graph.layers, 2, "[start, end]")
    if graph.kv is not None:
        for f in dataclasses.fields(KVNames):
            template = getattr(graph.kv, f.name)
            if template.count("%d") != 1 or template.count("%") != 1:
                fail(f"{path}.kv.{f.name}", f"{template!r} must contain exactly one %d (the layer index)")


_BAD_NAME = "is not a plain relative name inside the export folder (no '..', no absolute path)"


def _plain_name(name: str) -> bool:
    parts, windows = PurePosixPath(name).parts, PureWindowsPath(name)
    absolute = name.startswith("/") or bool(windows.drive or windows.root)
    return bool(parts) and ".." not in parts and "\\" not in name and not absolute


def _check_name(path: str, name: str) -> None:
    if not _plain_name(name):
        fail(path, f"{name!r} {_BAD_NAME}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs' external data can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file under ``folder`` (recursive) except feather.json.

    Keys are relative POSIX names (``tokenizer/tokenizer.json``), sorted.
    """
    root = Path(folder)
    out = {}
    for p in sorted(root.rglob("*")):
        name = p.relative_to(root).as_posix()
        temp = p.name.startswith(_TMP_PREFIX) and p.name.endswith(_TMP_SUFFIX)
        if p.is_file() and name != MANIFEST_NAME and not temp:
            out[name] = sha256_file(p)
    return out


def save_manifest(manifest: Manifest, folder: str | os.PathLike) -> Path:
    """Hash every file in ``folder`` into ``manifest.files`` and write feather.json atomically.

    The manifest is validated first (what ``load_manifest`` would refuse is never written).
    Sets ``manifest.files`` in place and returns the path of feather.json.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such folder")
    files = hash_folder(folder)
    data = dataclasses.replace(manifest, files=files).to_json()
    Manifest.from_json(data)
    target = folder / MANIFEST_NAME
    _write_atomic(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    manifest.files = files
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; match the graphs' permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read and validate ``folder/feather.json``; with ``verify``, check every file too.

    Raises ``ManifestError`` for a missing folder or feather.json, invalid JSON, a newer
    schema, any schema violation, and (with ``verify``) a missing or changed file.
    """
    folder = Path(folder)
    manifest = Manifest.from_json(_read_json(folder))
    if verify:
        verify_files(manifest, folder)
    return manifest


def _read_json(folder: Path) -> Any:
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such folder")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{folder} is not a feather export: {MANIFEST_NAME} missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def verify_files(manifest: Manifest, folder: str | os.PathLike) -> None:
    """Check every file in ``manifest.files`` against its sha256, and that named files exist."""
    folder = Path(folder)
    for name, digest in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise ManifestError(f"{path}: missing (listed in {MANIFEST_NAME})")
        if sha256_file(path) != digest:
            raise ManifestError(f"{path}: sha256 mismatch (file changed after export)")
    named = [(f"{p}.file", g.file) for p, g in manifest.graphs_with_paths()]
    for where, name in [*named, ("tokenizer", manifest.tokenizer)]:
        if not (folder / name).exists():
            raise ManifestError(f"{folder / name}: missing (named by {MANIFEST_NAME} {where})")
