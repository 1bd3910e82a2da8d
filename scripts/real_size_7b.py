"""LLaVA-1.5-7B at its real size on this machine: a random-weight checkpoint with
llava-1.5-7b-hf's exact configuration, then export, quantize and generate, each in a child
process whose time and peak RSS are recorded (issue 20; docs/benchmarks.md).

    python scripts/real_size_7b.py build  DIR          # ~14 GB of fp16 safetensors shards
    python scripts/real_size_7b.py export DIR OUT [--precision fp16] [--max-graph-layers 4] [--criterion none]
    python scripts/real_size_7b.py quantize OUT QOUT [--method int8-int4] [--calibration F.jsonl] [--steps N]
    python scripts/real_size_7b.py generate EXPORT [EXPORT ...]

``build`` never holds the model: it creates the module on torch's meta device (shapes only),
then writes each tensor as seeded random fp16 values, shard by shard (2 GB each), with the
index file transformers reads, so its peak RSS is one shard. Weights are N(0, 0.02) (HF's
initializer range) with norms at 1: a random model whose answers are noise, built to measure
memory and time, not accuracy. The tokenizer is the tiny 512-token BPE; the head's 32,064
rows are all computed (their cost is the real one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SHARD_BYTES = 2 * 2**30
CONFIG = {  # llava-hf/llava-1.5-7b-hf's config.json, the fields that shape the model
    "text": {"vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu"},
    "image_token_index": 32000, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
}


def build(out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from feather import checkpoints

    if (out / "model.safetensors.index.json").exists():
        print(f"{out}: already built")
        return
    tok = checkpoints.build_tokenizer()
    image_id, pad_id = tok.token_to_id(checkpoints.IMAGE_TOKEN), tok.token_to_id("<pad>")
    text = LlamaConfig(**CONFIG["text"], bos_token_id=1, eos_token_id=2, pad_token_id=pad_id)
    vision = CLIPVisionConfig(**CONFIG["vision"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_layer=CONFIG["vision_feature_layer"],
                         vision_feature_select_strategy=CONFIG["vision_feature_select_strategy"],
                         projector_hidden_act=CONFIG["projector_hidden_act"], image_seq_length=576, pad_token_id=pad_id)
    config.dtype = "float16"
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    shard, size, index, n = {}, 0, {}, 0
    names = list(shapes)
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        shape = shapes[name]
        norm = name.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight", "layer_norm2.weight",
                              "pre_layrnorm.weight", "post_layernorm.weight"))
        t = torch.ones(shape, dtype=torch.float16) if norm else (
            torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02).to(torch.float16))
        shard[name], size = t, size + t.numel() * 2
        if size >= SHARD_BYTES or i == len(names) - 1:
            n += 1
            file = f"model-{n:05d}.safetensors"
            save_file(shard, str(out / file), metadata={"format": "pt"})
            index.update({k: file for k in shard})
            print(f"shard {n}: {size / 2**30:.2f} GiB, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            shard, size = {}, 0
    total = sum(int(torch.Size(s).numel()) * 2 for s in shapes.values())
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": index}, indent=1))
    config.save_pretrained(out)
    tower = checkpoints.Vision(hidden=1024, ffn=4096, layers=24, heads=16)  # CLIP-L/14 at 336 px
    checkpoints.build_processor(tok, tower).save_pretrained(out)
    print(f"{out}: {total / 2**30:.2f} GiB of fp16 weights in {n} shards, {time.perf_counter() - t0:.0f} s")


def _child(job: dict, work: Path, tag: str) -> dict:
    from feather.bench.proc import run_child

    work.mkdir(parents=True, exist_ok=True)
    return run_child([sys.executable, "-m", "feather.bench.steps"], job, work, tag)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    e = sub.add_parser("export")
    e.add_argument("dir")
    e.add_argument("out", type=Path)
    e.add_argument("--precision", default="fp16")
    e.add_argument("--max-graph-layers", type=int, default=4)
    e.add_argument("--criterion", default="feather", help="feather (K 8 16, the defaults) or none (unpruned)")
    q = sub.add_parser("quantize")
    q.add_argument("export", type=Path)
    q.add_argument("out", type=Path)
    q.add_argument("--method", default="int8-int4")
    q.add_argument("--calibration", default=None, help="a calibration JSONL (default: the built-in four prompts)")
    q.add_argument("--steps", type=int, default=None, help="greedy tokens per calibration prompt (default 8)")
    g = sub.add_parser("generate")
    g.add_argument("exports", nargs="+")
    g.add_argument("--new-tokens", type=int, default=8)
    args = p.parse_args(argv)
    if args.cmd == "build":
        build(args.dir)
        return 0
    if args.cmd == "export":
        prune = {"criterion": "feather", "K": [8, 16]} if args.criterion == "feather" else {"criterion": "none"}
        job = {"step": "export", "model": args.dir, "prune": prune,
               "output": str(args.out), "precision": args.precision, "max_graph_layers": args.max_graph_layers}
        print(json.dumps(_child(job, args.out.parent / "steps", "export")))
        return 0
    if args.cmd == "quantize":
        job = {"step": "quantize", "export": str(args.export), "method": args.method, "output": str(args.out),
               "calibration": args.calibration, "max_new_tokens": args.steps}
        print(json.dumps(_child(job, args.out.parent / "steps", "quantize")))
        return 0
    for export in args.exports:
        job = {"kind": "chain", "export": export, "prompt": "Describe the image.", "new_tokens": args.new_tokens,
               "repeats": 1, "threads": None, "prune": {}}
        from feather.cli import SAMPLE_IMAGE

        job["image"] = str(SAMPLE_IMAGE)
        print(json.dumps(_row(job, Path(export).parent / "steps", Path(export).name)))
    return 0


def _row(job: dict, work: Path, tag: str) -> dict:
    from feather.bench.proc import run_child

    work.mkdir(parents=True, exist_ok=True)
    out = run_child([sys.executable, "-m", "feather.bench.rows"], job, work, tag)
    return {"export": job["export"], "ttft_s": out["samples"]["ttft_s"], "vision_s": out["samples"]["vision_s"],
            "llm_prefill_s": out["samples"]["llm_prefill_s"],
            "decode_tokens_per_s": out["samples"]["decode_tokens_per_s"], "peak_rss_bytes": out["peak_rss_bytes"],
            "kept": out["kept"]}


if __name__ == "__main__":
    raise SystemExit(main())
