"""Weights streamed per graph: export without ever holding the whole model.

``feather-export`` writes one graph at a time (vision, embed, segment 0, ...). Holding the
whole checkpoint while it does costs the model's size in RAM before the first graph starts:
LLaVA-1.5-7B is 13.5 GB in fp16 and 27 GB in fp32, more than a 16-24 GB desktop has. Here the
model is built by transformers on the meta device (shapes only; buffers such as the rotary
tables are real), and ``weights(...)`` reads the parameters of the modules one graph needs from
the checkpoint's safetensors shards, in the export's dtype, for as long as that graph is traced
and validated; afterwards they go back to meta and their memory is freed. Peak RSS is the
largest graph (times the exporter's copies), not the model (docs/benchmarks.md, "LLaVA-1.5-7B").

Checkpoint keys are mapped to the model's parameters with transformers' own conversion rules
(``get_model_conversion_mapping``: LLaVA checkpoints on the hub keep their pre-v5 names,
``language_model.model.layers.0...``); a checkpoint that needs more than renames is loaded
whole through ``from_pretrained`` instead (``open_streamed`` returns None and the reason), and
one whose keys miss a parameter is refused in one line (``from_pretrained`` would initialize
it at random).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Streamed:
    """A transformers model whose parameters live on the meta device until ``weights`` reads
    them: ``net`` is the model (``LlavaForConditionalGeneration``...), ``dtype`` the export's."""

    def __init__(self, net, dtype, sources: dict[str, tuple[Path, str]], holders: dict[int, list[tuple]]):
        self.net, self.dtype = net, dtype
        self._sources = sources  # id(param) -> (shard file, checkpoint key)
        self._holders = holders  # id(param) -> [(module, attribute name)], tied parameters have several
        self.loaded_bytes = 0  # the most bytes of weights held at once (for the progress line and tests)

    @contextmanager
    def weights(self, *modules):
        """The parameters of ``modules`` (and their children) read from the shards, for the
        duration of the block; ``None`` entries are skipped (an optional module)."""
        import torch
        from safetensors import safe_open

        wanted: dict[int, object] = {}
        for m in modules:
            if m is None:
                continue
            params = [m] if isinstance(m, torch.nn.Parameter) else list(m.parameters())
            for p in params:
                if p.is_meta:
                    wanted.setdefault(id(p), p)
        by_file: dict[Path, list[int]] = {}
        for key in wanted:
            by_file.setdefault(self._sources[key][0], []).append(key)
        placed: list[tuple[object, str, object]] = []
        total = 0
        try:
            for file, keys in by_file.items():
                with safe_open(str(file), framework="pt") as f:
                    for key in keys:
                        meta = wanted[key]
                        tensor = f.get_tensor(self._sources[key][1]).to(self.dtype)
                        if tuple(tensor.shape) != tuple(meta.shape):
                            from feather.errors import ModelError

                            raise ModelError(f"{file.name}: {self._sources[key][1]} has shape {tuple(tensor.shape)}, "
                                             f"the model expects {tuple(meta.shape)}")
                        param = torch.nn.Parameter(tensor, requires_grad=False)
                        total += tensor.numel() * tensor.element_size()
                        for module, name in self._holders[key]:
                            placed.append((module, name, meta))
                            module._parameters[name] = param
            self.loaded_bytes = max(self.loaded_bytes, total)
            yield
        finally:
            for module, name, meta in placed:
                module._parameters[name] = meta


def open_streamed(model: str, dtype):
    """A ``Streamed`` model for a local safetensors checkpoint, or None (with the reason as a
    string) where the checkpoint must be loaded whole: ``(Streamed | None, reason)``."""
    import transformers
    from accelerate import init_empty_weights
    from safetensors import safe_open

    from feather.hf.checkpoint import MODEL_CLASSES, load_config, resolve

    try:  # transformers 5's key conversion rules; 4.x loads whole
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:
        return None, f"transformers {transformers.__version__} has no conversion_mapping (5.0 or newer streams)"

    path = Path(resolve(model))
    if not path.is_dir():
        return None, "not a local folder"
    files = _shards(path)
    if files is None:
        return None, f"no {INDEX} or {SINGLE}"
    config = load_config(model)
    cls = getattr(transformers, MODEL_CLASSES[config.model_type])
    with init_empty_weights(include_buffers=False):
        net = cls._from_config(config, dtype=dtype)
    net.tie_weights()  # as from_pretrained does: a tied head is the embedding's Parameter, stored once
    net.eval()
    _generation_config(net, path)

    holders: dict[int, list[tuple]] = {}
    names: dict[str, int] = {}
    for mod_name, module in net.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False, remove_duplicate=False):
            if not any(h[0] is module and h[1] == pname for h in holders.get(id(p), [])):
                holders.setdefault(id(p), []).append((module, pname))
            names[f"{mod_name}.{pname}" if mod_name else pname] = id(p)

    transforms = get_model_conversion_mapping(net)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    meta_state = dict.fromkeys(names, True)
    sources: dict[int, tuple[Path, str]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
        for key in keys:
            target, converted = rename_source_key(key, renamings, converters, net.base_model_prefix, meta_state)
            if converted is not None:
                return None, f"{key} needs transformers' weight conversion, not a rename"
            if target in names:
                sources.setdefault(names[target], (file, key))
    missing = [n for n, i in names.items() if i not in sources]
    if missing:  # from_pretrained would initialize it at random with a warning: an export of noise
        from feather.errors import ModelError

        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelError(f"{model}: the checkpoint has no weight for {missing[0]}{more}; expected every parameter of "
                         f"{type(net).__name__} in its safetensors files")
    return Streamed(net, dtype, sources, holders), ""


def _shards(path: Path) -> list[Path] | None:
    if (path / INDEX).is_file():
        index = json.loads((path / INDEX).read_text())
        files = sorted(set(index.get("weight_map", {}).values()))
        return [_inside(path, f) for f in files]
    if (path / SINGLE).is_file():
        return [path / SINGLE]
    return None


def _inside(folder: Path, name: str) -> Path:
    """A shard named by the index: a plain file name in the checkpoint folder (no path), else refused."""
    from feather.errors import ModelError

    if not name or name != os.path.basename(name) or name in (".", "..") or not (folder / name).is_file():
        raise ModelError(f"{folder}/{INDEX}: shard {name!r} is not a file in the checkpoint folder")
    return folder / name


def _generation_config(net, path: Path) -> None:
    """What ``from_pretrained`` reads besides the weights: generation_config.json, if present."""
    if (path / "generation_config.json").is_file():
        from transformers import GenerationConfig

        net.generation_config = GenerationConfig.from_pretrained(str(path))
