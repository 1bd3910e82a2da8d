"""Train a small LLaVA on feather.grounding.shapes (CPU, one thread); save it with save_pretrained.

    python -m feather.grounding.train --minutes 10 --output grounding-llava
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from feather.grounding import shapes
from feather.prompt import LOCALIZATION_PROMPT as PROMPT

SEED = 0
IMAGE_TOKEN = "<image>"
TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
WORDS = ("USER : ASSISTANT Please provide the bounding box coordinate of region this sentence describes "
         '" [ ] ,').split()
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
    words = specials + WORDS + list(shapes.COLOURS) + list(shapes.SHAPES) + shapes.COORDS
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d+\.\d+|\w+|[^\w\s]"), behavior="isolated")])
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def build_model(tok, layers: int, hidden: int = 64):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=4, image_size=shapes.SIZE, patch_size=shapes.CELL,
                              projection_dim=hidden)
    text = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=172,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.token_to_id(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=shapes.GRID ** 2, projector_hidden_act="gelu")
    torch.manual_seed(SEED)
    return LlavaForConditionalGeneration(config)


def pixels(images) -> np.ndarray:
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])  # [B, H, W, 3]
    arr = (arr - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return arr.transpose(0, 3, 1, 2).copy()


def prompt_ids(tok, expression: str) -> list[int]:
    text = TEMPLATE.replace("{prompt}", PROMPT.format(expression=expression))
    return tok.encode(text.replace(IMAGE_TOKEN, IMAGE_TOKEN * shapes.GRID ** 2)).ids


def batch(tok, rng, size: int):
    import torch

    ids, labels, images = [], [], []
    for _ in range(size):
        sc = shapes.scene(rng)
        colour, shape, cell = sc.objects[sc.target]
        p = prompt_ids(tok, f"the {colour} {shape}")
        a = tok.encode(shapes.answer_text(cell), add_special_tokens=False).ids + [2]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
        images.append(sc.image)
    return torch.tensor(ids), torch.tensor(labels), torch.from_numpy(pixels(images))


def cell_accuracy(model, tok, rng, n: int = 64) -> float:
    """Exact-cell accuracy of teacher-forced argmax answers (a fast training-time proxy)."""
    import torch

    ids, labels, px = batch(tok, rng, n)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=px).logits[:, :-1]
    pred, gold = logits.argmax(-1), labels[:, 1:]
    mask = gold != -100
    return float(((pred == gold) | ~mask).all(-1).float().mean())


def train(minutes: float, layers: int, lr: float, bsz: int, log=print, init: str | None = None, seed: int = SEED,
          progress=None):
    """Train for ``minutes`` of wall time (cosine schedule over it); ``init``: continue from a saved model.
    ``progress(elapsed_s, budget_s, text)`` is called after every step."""
    import torch

    torch.set_num_threads(1)
    tok = build_tokenizer()
    if init is None:
        model = build_model(tok, layers)
    else:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(init)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    rng, eval_rng = np.random.default_rng(seed), np.random.default_rng(10_000 + seed)
    t0, step, seen = time.monotonic(), 0, 0
    budget = minutes * 60
    while time.monotonic() - t0 < budget:
        frac = (time.monotonic() - t0) / budget
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * frac))
        ids, labels, px = batch(tok, rng, bsz)
        loss = model(input_ids=ids, pixel_values=px, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, seen = step + 1, seen + bsz
        if progress is not None:
            progress(time.monotonic() - t0, budget, f"step {step} loss {loss.item():.3f}")
        if step % 50 == 0:
            model.eval()
            acc = cell_accuracy(model, tok, eval_rng)
            model.train()
            log(f"step {step} seen {seen} {time.monotonic() - t0:.0f}s loss {loss.item():.3f} cell-acc {acc:.3f}")
    return model, tok


def build_parser() -> argparse.ArgumentParser:
    from feather import cli

    parser = cli.ArgumentParser(prog="python -m feather.grounding.train")
    parser.add_argument("--minutes", type=cli.finite_float, default=10)
    parser.add_argument("--layers", type=cli.int_in(1, 64), default=18)
    parser.add_argument("--lr", type=cli.finite_float, default=2e-3)
    parser.add_argument("--batch", type=cli.int_in(1, 4096), default=32)
    parser.add_argument("--output", default=None)
    parser.add_argument("--init", default=None, help="continue from this saved model")
    parser.add_argument("--seed", type=cli.int_in(0, 2**63 - 1), default=SEED, help="data stream seed")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar on stderr")
    return parser


def _body(args: argparse.Namespace) -> int:
    from feather.errors import ConfigError

    if not 0 < args.minutes <= 7 * 24 * 60 or not 0 < args.lr < 1:
        raise ConfigError(f"--minutes {args.minutes} / --lr {args.lr}: expected minutes in (0, 10080] and lr in (0, 1)")
    with _Bar(args.quiet) as bar:
        model, tok = train(args.minutes, args.layers, args.lr, args.batch, log=bar.log, init=args.init,
                           seed=args.seed, progress=bar.update)
    if args.output:
        save(model, tok, args.output)
    return 0


class _Bar:
    """The trainer's progress on stderr: a rich bar over the time budget (the loss of the last
    step), the periodic accuracy lines above it; only the lines with ``quiet``."""

    def __init__(self, quiet: bool):
        self.quiet, self._progress = quiet, None

    def __enter__(self) -> _Bar:
        if not self.quiet:
            import sys

            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), TimeElapsedColumn(),
                                      console=Console(file=sys.stderr))
            self._progress.__enter__()
            self._task = self._progress.add_task("loading torch", total=1.0)
        return self

    def update(self, elapsed: float, budget: float, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=min(elapsed / budget, 1.0), description=text)

    def log(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, highlight=False)
        else:
            print(line, flush=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def main(argv=None) -> int:
    from feather import cli

    return cli.run(_body, build_parser(), argv)


def processor(tok):
    """The ``LlavaProcessor`` that feeds this model: CLIP preprocessing at 96 px, the word tokenizer."""
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN})
    image_processor = CLIPImageProcessor(size={"shortest_edge": shapes.SIZE},
                                         crop_size={"height": shapes.SIZE, "width": shapes.SIZE},
                                         image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return LlavaProcessor(image_processor=image_processor, tokenizer=hf_tok, patch_size=shapes.CELL,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def save(model, tok, folder) -> Path:
    """``save_pretrained`` the model and its processor into ``folder`` (loadable by ``--model folder``)."""
    folder = Path(folder)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 3
    model.save_pretrained(folder)
    processor(tok).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    raise SystemExit(main())
