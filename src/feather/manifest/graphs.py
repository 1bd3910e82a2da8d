"""The graph I/O contract: per kind of graph, its roles, default tensor names, KV name templates,
dynamic axes and the shapes of its inputs. Torch-free; the one place these are written.

The exporter names tensors (``export/segments.py``) and records them (``export/manifest_build.py``)
from here; the manifest checks (``checks.ROLES``), the runtime loop (``runtime/pipeline.py``) and
both TensorRT profile builders (``runtime/backends/onnxruntime.py``, ``build/engines.py``) read
them from here or from a manifest's ``GraphSpec`` built here. Renaming a tensor or adding an input
is one edit in this file (tests/feather/test_single_home.py fails on a role's literal elsewhere).

    vision:  pixel_values [T,3,H,W] -> image_features [1,N,d]                      (static)
    embed:   input_ids [1,S] -> embeds [1,S,d]
    segment: hidden [1,S_in,d], keep_index [S], position_ids [1,S], past_len [1],
             cache.{i}.key/value [1,KV,C,hd] -> hidden_out [1,S,d] | logits [1,V],
             new.{i}.key/value [1,KV,S,hd], score [1,H,S] (when the next stage ranks by attention)
"""

from __future__ import annotations

from feather.manifest.schema import AxisRange, Dims, GraphSpec, KVNames

VISION, EMBED, SEGMENT = "vision", "embed", "segment"
"""The kinds of graph (``checks`` reads a graph's kind from its JSON path)."""

PIXEL_VALUES, IMAGE_FEATURES = "pixel_values", "image_features"
INPUT_IDS, EMBEDS = "input_ids", "embeds"
SEGMENT_INPUTS = ("hidden", "keep_index", "position_ids", "past_len")
"""A decoder segment's input roles, in graph input order (``DecoderSegment.forward``'s), before the caches."""
HIDDEN, KEEP_INDEX, POSITION_IDS, PAST_LEN = SEGMENT_INPUTS
SEGMENT_OUTPUTS = ("hidden", "logits", "score")
"""A segment's output roles: ``hidden`` (inner segment) or ``logits`` (the last), and ``score``."""
LOGITS, SCORE = SEGMENT_OUTPUTS[1:]

ROLES = {
    VISION: (frozenset({PIXEL_VALUES}), frozenset({IMAGE_FEATURES})),
    EMBED: (frozenset({INPUT_IDS}), frozenset({EMBEDS})),
    SEGMENT: (frozenset(SEGMENT_INPUTS), frozenset(SEGMENT_OUTPUTS)),
}
"""Input and output roles each kind of graph may name (segments: ``hidden`` or ``logits`` out)."""

NAMES = {PIXEL_VALUES: PIXEL_VALUES, IMAGE_FEATURES: IMAGE_FEATURES, INPUT_IDS: INPUT_IDS, EMBEDS: EMBEDS,
         **{role: role for role in SEGMENT_INPUTS}, LOGITS: LOGITS, SCORE: SCORE}
"""Default tensor name of each input role, and of each output role but a segment's ``hidden``."""
HIDDEN_OUT = "hidden_out"
"""A segment's ``hidden`` output tensor (``hidden`` is already its input's name)."""
KV_NAMES = {"cache_key": "cache.%d.key", "cache_value": "cache.%d.value",
            "new_key": "new.%d.key", "new_value": "new.%d.value"}
"""Default per-layer KV templates (``KVNames``): the cache buffer read, the new rows returned."""

SEQ, SEQ_IN, CACHE = "seq", "seq_in", "cache"
"""Dynamic axis names: the tokens a segment runs, the tokens it gathers from, the cache capacity."""


def vision_spec(file: str, dtype: str) -> GraphSpec:
    """The vision graph's ``GraphSpec`` (static shapes: no axes)."""
    return GraphSpec(file=file, inputs={PIXEL_VALUES: NAMES[PIXEL_VALUES]},
                     outputs={IMAGE_FEATURES: NAMES[IMAGE_FEATURES]}, dtype=dtype)


def embed_spec(file: str, seq: AxisRange, dtype: str) -> GraphSpec:
    return GraphSpec(file=file, inputs={INPUT_IDS: NAMES[INPUT_IDS]}, outputs={EMBEDS: NAMES[EMBEDS]},
                     axes={SEQ: seq}, dtype=dtype)


def segment_spec(file: str, layers: tuple[int, int], final: bool, score: bool, seq: AxisRange, dtype: str,
                 n_image_in: int | None = None) -> GraphSpec:
    """A decoder segment's ``GraphSpec`` for layers ``[start, end)``: ``logits`` out when ``final``
    (else ``hidden``), a ``score`` output when the next stage ranks by attention. Its ``cache`` axis
    is the KV buffer's capacity (>= 1: a prefill binds a dummy row); it ranges like ``seq``."""
    outputs = {LOGITS: NAMES[LOGITS]} if final else {HIDDEN: HIDDEN_OUT}
    if score:
        outputs[SCORE] = NAMES[SCORE]
    return GraphSpec(file=file, inputs={role: NAMES[role] for role in SEGMENT_INPUTS}, outputs=outputs,
                     axes={SEQ: seq, CACHE: seq}, layers=[layers[0], layers[1]], kv=KVNames(**KV_NAMES),
                     n_image_in=n_image_in, dtype=dtype)


def kind_of(graph: GraphSpec) -> str:
    """vision, embed or segment."""
    return SEGMENT if graph.layers is not None else EMBED if INPUT_IDS in graph.inputs else VISION


def kv_names(graph: GraphSpec, which: str) -> list[str]:
    """A segment's ``cache`` (inputs) or ``new`` (outputs) KV tensors: (key, value) per layer, in order."""
    if graph.kv is None:
        return []
    offset = 0 if which == "cache" else 2
    return [n for layer in range(*graph.layers) for n in graph.kv.names(layer)[offset : offset + 2]]


def input_names(graph: GraphSpec) -> list[str]:
    """The graph's input tensors in graph order (a segment's roles, then its caches)."""
    if kind_of(graph) != SEGMENT:
        return list(graph.inputs.values())
    return [graph.inputs[role] for role in SEGMENT_INPUTS] + kv_names(graph, "cache")


def output_names(graph: GraphSpec) -> list[str]:
    """The graph's output tensors in graph order (a segment: hidden or logits, new rows, score)."""
    if kind_of(graph) != SEGMENT:
        return list(graph.outputs.values())
    first = graph.outputs.get(HIDDEN) or graph.outputs[LOGITS]
    return [first, *kv_names(graph, "new")] + ([graph.outputs[SCORE]] if SCORE in graph.outputs else [])


def dynamic_axes(graph: GraphSpec) -> dict[str, dict[int, str]]:
    """ONNX dynamic axes per tensor name (``torch.onnx.export``'s ``dynamic_axes``)."""
    kind = kind_of(graph)
    if kind == VISION:
        return {}
    if kind == EMBED:
        return {graph.inputs[INPUT_IDS]: {1: SEQ}, graph.outputs[EMBEDS]: {1: SEQ}}
    names = graph.inputs
    axes = {names[HIDDEN]: {1: SEQ_IN}, names[KEEP_INDEX]: {0: SEQ}, names[POSITION_IDS]: {1: SEQ}}
    axes.update({n: {2: CACHE} for n in kv_names(graph, "cache")})
    axes.update({n: {2: SEQ} for n in kv_names(graph, "new")})
    if HIDDEN in graph.outputs:
        axes[graph.outputs[HIDDEN]] = {1: SEQ}
    if SCORE in graph.outputs:
        axes[graph.outputs[SCORE]] = {2: SEQ}
    return axes


def role_shapes(graph: GraphSpec, dims: Dims, seq: int, cap: int) -> dict[str, tuple[int, ...]]:
    """The shape of each input with a dynamic axis, for ``seq`` tokens and a KV buffer of capacity
    ``cap``, by tensor name in graph order (a TensorRT profile is three of these: min, opt, max).
    The vision graph is static (no entry); ``past_len`` is always [1] (no entry).

        embed:   input_ids [1, S]
        segment: hidden [1, S, d] (S_in <= S's range), keep_index [S], position_ids [1, S],
                 cache.{i}.key/value [1, KV, C, hd]"""
    kind = kind_of(graph)
    if kind == VISION:
        return {}
    if kind == EMBED:
        return {graph.inputs[INPUT_IDS]: (1, seq)}
    names = graph.inputs
    shapes = {names[HIDDEN]: (1, seq, dims.hidden), names[KEEP_INDEX]: (seq,), names[POSITION_IDS]: (1, seq)}
    shapes.update({n: (1, dims.kv_heads, cap, dims.head_dim) for n in kv_names(graph, "cache")})
    return shapes
