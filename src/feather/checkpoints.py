"""Seeded LLaVA checkpoints built in code, from a few geometry numbers: the one builder
behind the tiny checkpoint (``feather.tiny``), the benchmark checkpoint
(``feather.bench.checkpoint``) and the test geometries (``tests/checkpoints.py``).

A ``Spec`` names what differs between them (text family and widths, the vision tower (CLIP
or SigLIP) and its image grid, the seed, a few init choices); everything else is shared: a
byte-level BPE trained with ``tokenizers`` on a seeded corpus (512 tokens, ``<image>``
included), a ``LlavaProcessor`` with the tower's preprocessing, random weights at std 0.2 (at HF's default
0.02 greedy decoding repeats one token), a projector scaled up so that image content
moves the answer, and ``save_pretrained`` into a partial folder renamed into place, so an
interrupted build leaves nothing half-written. Everything is seeded: one spec always
gives the same bytes (with the same torch, tokenizers and transformers).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

SEED = 0
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
VOCAB_SIZE = 512
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]

_WORDS = (
    "the a an this that image photo picture shows there is are of in on at with near left right top "
    "bottom middle red green blue yellow white black cat dog person car tree house sky road box bowl "
    "table robot arm gripper cup bottle shelf door window floor wall light dark small large round "
    "square what where which how many color object region describe provide bounding coordinate "
    "sentence answer question user assistant yes no one two three four five it its and or but"
).split()

# text family -> (transformers config class, the keyword arguments that family's fixtures fix)
TEXT_FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {"rms_norm_eps": 1e-5}),  # Llama-2's eps
    "qwen2": ("Qwen2Config", {"rope_theta": 10000.0, "use_sliding_window": False, "tie_word_embeddings": False}),
    "mistral": ("MistralConfig", {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 4096}),  # bakLlava's
}

# vision tower -> (transformers config class, select strategy giving the G x G patches)
TOWERS: dict[str, tuple[str, str]] = {
    "clip": ("CLIPVisionConfig", "default"),  # CLS first, dropped by "default"
    "siglip": ("SiglipVisionConfig", "full"),  # no CLS: "full" is the grid (llava-interleave)
}


@dataclass(frozen=True)
class Text:
    """The language model's geometry. ``head_dim=None`` leaves it to the family (hidden / heads);
    ``tie_embeddings=None`` leaves it to the family too (True: the LM head is the embedding)."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int | None = None
    family: str = "llama"
    max_positions: int = 4096
    tie_embeddings: bool | None = None
    rope_theta: float | None = None  # None: the family's fixture value

    def __post_init__(self):
        if self.family not in TEXT_FAMILIES:
            raise ValueError(f"family: got {self.family!r}, expected one of {', '.join(TEXT_FAMILIES)}")


@dataclass(frozen=True)
class Vision:
    """The vision tower (``clip`` or ``siglip``); LLaVA reads the hidden states of ``feature_layer``."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    image_size: int = 336
    patch_size: int = 14
    feature_layer: int = -2
    tower: str = "clip"
    pinpoints: tuple[tuple[int, int], ...] | None = None  # set: a LLaVA-NeXT (tiles at these resolutions)

    def __post_init__(self):
        if self.tower not in TOWERS:
            raise ValueError(f"tower: got {self.tower!r}, expected one of {', '.join(TOWERS)}")

    @property
    def select_strategy(self) -> str:
        return TOWERS[self.tower][1]

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2  # the G x G patches (CLIP's CLS dropped)


@dataclass(frozen=True)
class Spec:
    """One checkpoint. ``pad_in_config`` writes ``pad_token_id`` into the configs (which
    also zeroes the pad row of the embedding at init); ``zero_eos_logit`` zeroes the EOS
    row of the LM head, so that greedy decoding never stops early. ``vocab_size`` larger
    than the tokenizer's gives a real checkpoint's head cost (Qwen1.5: 151,936 rows); the
    rows no token spells are zeroed in the LM head (and, tied, the embedding), so greedy
    decoding stays within the tokenizer."""

    text: Text
    vision: Vision
    seed: int = SEED
    projector_scale: float = 4.0
    pad_in_config: bool = True
    zero_eos_logit: bool = False
    vocab_size: int | None = None  # the model's vocabulary; None: the tokenizer's (512)
    save_dtype: str = "float32"  # "float16": saved as the hub's checkpoints are


def _corpus(n: int = 4000) -> list[str]:
    rng = random.Random(SEED)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","]))
    return lines


def build_tokenizer():
    """A byte-level BPE trained with ``tokenizers`` on a seeded corpus; BOS added by its
    post-processor, so the plain ``tokenizers`` library encodes exactly like transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def build_config(spec: Spec, vocab_size: int, image_token_id: int, pad_id: int):
    """The ``LlavaConfig`` of ``spec``."""
    import transformers
    from transformers import LlavaConfig

    t, v = spec.text, spec.vision
    cls_name, family_kwargs = TEXT_FAMILIES[t.family]
    if t.tie_embeddings is not None:
        family_kwargs = {**family_kwargs, "tie_word_embeddings": t.tie_embeddings}
    if t.rope_theta is not None:
        family_kwargs = {**family_kwargs, "rope_theta": t.rope_theta}
    optional = {"head_dim": t.head_dim, "pad_token_id": pad_id if spec.pad_in_config else None}
    text = getattr(transformers, cls_name)(
        vocab_size=vocab_size, hidden_size=t.hidden, intermediate_size=t.ffn, num_hidden_layers=t.layers,
        num_attention_heads=t.heads, num_key_value_heads=t.kv_heads, max_position_embeddings=t.max_positions,
        initializer_range=0.2, bos_token_id=1, eos_token_id=2,
        **family_kwargs, **{k: x for k, x in optional.items() if x is not None},
    )
    tower_kwargs = {"projection_dim": v.hidden} if v.tower == "clip" else {"vision_use_head": False}
    vision = getattr(transformers, TOWERS[v.tower][0])(
        hidden_size=v.hidden, intermediate_size=v.ffn, num_hidden_layers=v.layers, num_attention_heads=v.heads,
        image_size=v.image_size, patch_size=v.patch_size, **tower_kwargs,
    )
    pad = {"pad_token_id": pad_id} if spec.pad_in_config else {}
    if v.pinpoints is not None:
        return transformers.LlavaNextConfig(
            vision_config=vision, text_config=text, image_token_index=image_token_id,
            vision_feature_layer=v.feature_layer, vision_feature_select_strategy=v.select_strategy,
            image_grid_pinpoints=[list(p) for p in v.pinpoints], image_seq_length=v.image_tokens, **pad,
        )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        vision_feature_layer=v.feature_layer, vision_feature_select_strategy=v.select_strategy,
        image_seq_length=v.image_tokens, **pad,
    )


def build_processor(tok, vision: Vision):
    """A ``LlavaProcessor`` around ``tok`` with the tower's preprocessing at ``vision.image_size``:
    CLIP's (shortest-edge resize, center crop) or SigLIP's (straight resize to a square, no
    crop, bicubic, mean = std = 0.5, as llava-interleave ships it)."""
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    cls = TOWERS[vision.tower][1] == "default"  # one token before the patches, dropped by "default"
    if vision.pinpoints is not None:
        from transformers import LlavaNextProcessor

        return LlavaNextProcessor(
            image_processor=_next_image_processor(vision), tokenizer=hf_tok, patch_size=vision.patch_size,
            vision_feature_select_strategy=vision.select_strategy, num_additional_image_tokens=int(cls),
        )
    return LlavaProcessor(
        image_processor=_image_processor(vision), tokenizer=hf_tok, patch_size=vision.patch_size,
        vision_feature_select_strategy=vision.select_strategy, num_additional_image_tokens=int(cls),
    )


def _image_processor(vision: Vision):
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    side = vision.image_size
    if vision.tower == "siglip":
        return SiglipImageProcessor(
            size={"height": side, "width": side}, resample=3, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD,
        )
    return CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )


def _next_image_processor(vision: Vision):
    """llava-v1.6's preprocessing at ``vision.image_size``: tiles from ``pinpoints``, CLIP's mean/std."""
    from transformers import LlavaNextImageProcessor

    side = vision.image_size
    return LlavaNextImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        image_grid_pinpoints=[list(p) for p in vision.pinpoints], image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )


def build_model(spec: Spec, tok):
    """The seeded ``LlavaForConditionalGeneration`` of ``spec`` for tokenizer ``tok``."""
    import torch
    from transformers import LlavaForConditionalGeneration

    image_id, pad_id, eos_id = (tok.token_to_id(t) for t in (IMAGE_TOKEN, "<pad>", "</s>"))
    config = build_config(spec, spec.vocab_size or tok.get_vocab_size(), image_id, pad_id)
    torch.manual_seed(spec.seed)
    if spec.vision.pinpoints is not None:
        from transformers import LlavaNextForConditionalGeneration

        model = LlavaNextForConditionalGeneration(config).eval()
    else:
        model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():  # let the image move the answer
            p.mul_(spec.projector_scale)
        if spec.zero_eos_logit:
            model.lm_head.weight[eos_id] = 0.0  # logit 0 never wins over the random ones
        model.lm_head.weight[tok.get_vocab_size():] = 0.0  # rows no token spells (none at 512)
    return model


def is_built(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a complete build (the partial folder is renamed in last)."""
    path = Path(path)
    return (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def build(spec: Spec, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Build ``spec`` into ``path`` once and return the folder; a complete build already
    there is kept unless ``overwrite``. Written to ``<path>.partial``, then renamed."""
    out = Path(path)
    if is_built(out) and not overwrite:
        return out
    tok = build_tokenizer()
    model = build_model(spec, tok)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    if spec.save_dtype == "float16":
        model = model.half()
    model.save_pretrained(tmp)
    build_processor(tok, spec.vision).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
