"""``feather.json``: the one contract between the exporter and the runtime (which reads nothing else).

Split by concern: ``schema`` (the typed, versioned dataclasses and option tables), ``graphs``
(the graph I/O contract: roles, tensor names, KV templates, shapes), ``checks`` (what types cannot
say: consistency between stages, segments, axes and numbers, checked at load time; ``parse``
decodes and checks), ``names`` (which file names a manifest may hold), and
``files`` (hashing, atomic writing, reading and verifying an export folder). Stdlib only, so
the runtime imports it without torch.
"""

from feather.jsoncodec import MANIFEST_NAME, from_json, to_json
from feather.manifest.checks import check_manifest, parse
from feather.manifest.files import hash_folder, load_manifest, save_manifest, sha256_file, verify_files
from feather.manifest.graphs import ROLES, SEGMENT_INPUTS
from feather.manifest.schema import (
    BOUNDS,
    DTYPES,
    EXPORT_OPSETS,
    MAX_IMAGE_SIDE,
    PRECISION_DTYPE,
    PRECISIONS,
    SCHEMA_VERSION,
    TARGETS,
    AxisRange,
    Dims,
    GraphSpec,
    ImageSpec,
    KVNames,
    Manifest,
    PointRange,
    PromptSpec,
    PruningSpec,
    Source,
    StageSpec,
    TokenSpec,
    Tolerance,
)

__all__ = [
    "BOUNDS", "DTYPES", "EXPORT_OPSETS", "MANIFEST_NAME", "MAX_IMAGE_SIDE", "PRECISION_DTYPE", "PRECISIONS", "ROLES",
    "SCHEMA_VERSION",
    "SEGMENT_INPUTS", "TARGETS", "AxisRange", "Dims", "GraphSpec",
    "ImageSpec", "KVNames", "Manifest", "PointRange", "PromptSpec", "PruningSpec", "Source", "StageSpec", "TokenSpec",
    "Tolerance", "check_manifest", "from_json", "hash_folder", "load_manifest", "parse", "save_manifest",
    "sha256_file", "to_json", "verify_files",
]
