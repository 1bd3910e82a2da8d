"""The schema of ``feather.json``: typed, strict, versioned dataclasses.

Each section is a dataclass decoded by the type-hint-driven codec in ``feather.jsoncodec``,
so an unknown key, missing key or wrong type fails with its JSON path
(``feather.json: segments[1].inputs.hidden: expected str, got int``); what types cannot say
(consistency, bounds) is checked by ``feather.manifest.checks`` at load time: decode and check
with ``feather.manifest.parse(data)``. This module holds only the dataclasses and the option tables
(it imports no other manifest module but ``names``); the graph I/O roles are in ``graphs``.

Schema 2 (feather-vlm 0.2): decoder segments read a KV cache buffer of fixed capacity plus
``past_len`` and return only the new rows (``kv.cache_*`` / ``kv.new_*``); the manifest
records the target runtime and each graph's dtype and method. Schema 1 folders (caches
concatenated in-graph) are refused with a re-export hint.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feather.errors import ManifestError
from feather.jsoncodec import to_json
from feather.manifest.names import BAD_NAME, plain_name

SCHEMA_VERSION = 2

# ---------------------------------------------------------------- option domains: the one table of each
# Every other module (the exporter, the runtime, the CLIs' ``choices=`` and ranges) imports these;
# tests/feather/test_single_home.py fails if one is typed out again elsewhere.
PRECISIONS = ("fp32", "fp16")
"""Export precisions (``feather-export --precision``, ``Manifest.precision``)."""
DTYPES = ("float32", "float16")
"""Float types of a graph's float tensors (``GraphSpec.dtype``); numpy's and torch's names for them."""
PRECISION_DTYPE = {"fp32": "float32", "fp16": "float16"}
"""Export precision -> the dtype of every graph it writes."""
TARGETS = ("portable", "onnxruntime")
"""What a graph set is made for: ``portable`` (standard ONNX ops and QDQ: TensorRT, any ONNX
runtime) or ``onnxruntime`` (may also use ONNX Runtime's ``com.microsoft`` fused operators)."""
BOUNDS = {
    "dims.num_layers": (1, 1024), "dims.hidden": (1, 65536), "dims.heads": (1, 1024), "dims.kv_heads": (1, 1024),
    "dims.head_dim": (1, 1024), "dims.vocab": (1, 1 << 22), "dims.intermediate": (1, 1 << 20),
    "dims.n_image": (1, 16384), "dims.grid": (1, 128), "dims.vision_hidden": (1, 65536),
    "max_seq": (16, 1 << 18), "opset": (17, 23), "pruning.stride": (1, 128),
}
"""Inclusive bounds per numeric field (7B LLaVA: 32 layers, d 4096, vocab 32064, 576 tokens); the
exporter's options take the same ones (``feather-export --max-seq``), so a value the manifest
would refuse is refused before any graph is exported."""
EXPORT_OPSETS = (17, 21)
"""Opsets ``feather-export --opset`` writes (the tracer's, validated by the export); the manifest's
bound is wider (``BOUNDS["opset"]``: feather-quantize converts int4-qdq to 21, fp8-qdq to 19, and
records what it wrote)."""
MAX_IMAGE_SIDE = 4096
"""Largest image side in pixels (crop, shortest edge, LLaVA-NeXT frames and tiles)."""
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
class TileSpec:
    """LLaVA-NeXT's tiling, fixed at export for one frame size (``feather-export --image-size``).

    The vision graph takes ``1 + rows * cols`` images of ``image.size``: the frame resized
    straight to that size (the base), then the tiles of the frame resized to ``resized`` keeping
    its aspect ratio, zero-padded (centred) to ``resolution`` and cut row-major. Its output is
    ``dims.grid``^2 base features, then ``features[0]`` lines of ``features[1]`` unpadded tile
    features, each line followed by one newline token."""

    frame: list[int]  # [height, width] of the frames this export takes; others are refused
    resolution: list[int]  # [height, width] picked from image_grid_pinpoints
    resized: list[int]  # [height, width] of the frame inside the padded resolution
    grid: list[int]  # tiles [rows, cols]
    features: list[int]  # unpadded tile features [rows, cols]


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
    keep_range: list[int] | None = None  # [fewest, most] kept over ``pruning.points`` (static mode)


@dataclass
class PointRange:
    """The operating points a call may choose (``feather.points``): ratio and stride ranges
    (inclusive) and modes. The export's own point (``PruningSpec.ratio`` ...) lies inside."""

    ratio: list[float]
    stride: list[int]
    modes: list[str]


@dataclass
class PruningSpec:
    """The pruning plan (criterion, K list, ratio R, stride, mode, stages)."""

    criterion: str
    K: list[int]
    ratio: float
    stride: int
    mode: str
    stages: list[StageSpec]
    points: PointRange | None = None  # None (exports before operating points): only the export's own point


@dataclass
class AxisRange:
    """A dynamic axis' min / opt / max (TensorRT optimisation profile)."""

    min: int
    opt: int
    max: int


@dataclass
class KVNames:
    """Per-layer KV tensor name templates, each with one ``%d`` (e.g. ``cache.%d.key``).

    ``cache_*``: the input cache buffer [1, KV, C, hd] (C = capacity; rows >= ``past_len``
    are masked); ``new_*``: the output rows [1, KV, S, hd] this step adds, which the runtime
    writes into the buffer at ``past_len``."""

    cache_key: str
    cache_value: str
    new_key: str
    new_value: str

    def names(self, layer: int) -> tuple[str, ...]:
        """(cache_key, cache_value, new_key, new_value) names for ``layer``."""
        return tuple(getattr(self, f.name) % layer for f in dataclasses.fields(self))


@dataclass
class GraphSpec:
    """One ONNX graph: file, tensor names, dynamic axes; segments add layers [start, end) and KV."""

    file: str
    inputs: dict[str, str]  # role -> tensor name (roles: feather.manifest.graphs.ROLES)
    outputs: dict[str, str]
    axes: dict[str, AxisRange] = field(default_factory=dict)
    layers: list[int] | None = None
    kv: KVNames | None = None
    n_image_in: int | None = None  # image tokens the segment holds after its gather (static mode)
    dtype: str = "float32"  # float type of its float inputs and outputs (hidden, KV, pixels)
    method: str = "float"  # how its weights are stored: float, or a quantization method
    decode_file: str | None = None  # a graph with the same tensors for decode steps (e.g. INT4 weights)
    decode_method: str | None = None  # how decode_file's weights are stored


@dataclass
class Tolerance:
    """Max abs differences the export was validated to (ONNX vs PyTorch)."""

    logits_abs: float
    hidden_abs: float


@dataclass
class EngineProfile:
    """One TensorRT optimization profile: ``shapes[tensor] = [min, opt, max]`` (each a shape)."""

    name: str  # what it serves: prefill, decode, or all
    shapes: dict[str, list[list[int]]]


@dataclass
class EngineSpec:
    """A TensorRT engine built from ``graph`` by ``feather-build``, for one GPU and TensorRT
    version (engines are not portable). It lives under ``engines/``, which the runtime's
    integrity check leaves alone; its own ``sha256`` is checked before it is deserialized."""

    graph: str  # the graph file it was built from (a ``file`` or ``decode_file`` above)
    file: str  # engines/<name>.engine
    sha256: str
    graph_sha256: str  # the graph's sha256 at build time (a changed graph needs a rebuild)
    tensorrt: str  # tensorrt.__version__ of the builder
    gpu: str  # the GPU's name
    compute_capability: str  # "8.7"
    precision: str  # as-exported, fp16 or bf16
    profiles: list[EngineProfile]


@dataclass
class Manifest:
    """Everything the runtime needs, as written to ``feather.json``."""

    schema_version: int
    producer: str
    target: str
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
    engines: list[EngineSpec] = field(default_factory=list)  # written by feather-build
    tiles: TileSpec | None = None  # LLaVA-NeXT exports only

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (field order kept); ``feather.manifest.parse`` reads it back."""
        return to_json(self)  # the module-level codec

    def graph_files(self) -> list[tuple[str, str]]:
        """(JSON path, file) of every graph file the runtime opens, decode variants included."""
        out = []
        for path, graph in self.graphs_with_paths():
            out.append((f"{path}.file", graph.file))
            if graph.decode_file is not None:
                out.append((f"{path}.decode_file", graph.decode_file))
        return out

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
        if not plain_name(name):
            raise ManifestError(f"{name!r} {BAD_NAME}")
        return Path(folder) / name
