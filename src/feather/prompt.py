"""The prompt template a LLaVA checkpoint expects (torch-free)."""

from __future__ import annotations

import json

from feather.errors import InputError

LLAVA_1_5_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
"""LLaVA-1.5's conversation format, used when the processor carries no chat template."""

LOCALIZATION_PROMPT = 'Please provide the bounding box coordinate of the region this sentence describes: "{expression}"'
"""The paper's localization prompt (wrapped in the checkpoint's chat template by the model),
used by feather-eval and the grounding trainer."""

_SENTINEL = "\x00FEATHER_PROMPT\x00"


def template_from_processor(processor) -> str:
    """The checkpoint's prompt template with a literal ``{prompt}`` slot: its chat template
    rendered once around a sentinel, or LLaVA-1.5's when it has none."""
    chat = getattr(processor, "chat_template", None)
    if not chat:
        return LLAVA_1_5_TEMPLATE
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _SENTINEL}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return text.replace(_SENTINEL, "{prompt}")


def render(template: str, prompt: str, image_token: str = "<image>") -> str:
    """Fill ``template`` with the user's question (str.replace: braces in prompts are text).

    Raises ``InputError`` for a prompt that is not a str, is empty, is not valid Unicode
    (lone surrogates: bytes that were not UTF-8 on the command line), or brings its own image
    token (the model takes exactly one image, and the template already places it)."""
    check_prompt(prompt)
    if image_token in prompt:
        raise InputError(
            f"prompt: contains {image_token!r}; the template already places the one image this model takes"
        )
    return template.replace("{prompt}", prompt)


def check_prompt(prompt: object) -> str:
    """``prompt`` if it is a non-empty str that encodes as UTF-8; else ``InputError``."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt: expected str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InputError("prompt: empty; expected a question about the image")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        cp = ord(prompt[err.start])
        what = f"byte 0x{cp - 0xDC00:02x}" if 0xDC80 <= cp <= 0xDCFF else f"lone surrogate U+{cp:04X}"
        raise InputError(f"prompt: not valid UTF-8 text ({what} at character {err.start})") from None
    return prompt


class TextTokenizer:
    """Copies of a ``tokenizers.Tokenizer`` that read special-token strings as text
    (``encode_special_tokens``, what transformers' ``split_special_tokens`` sets): what tokenizes
    the user's part of a prompt. Copies, so the shared tokenizer is never toggled while another
    thread encodes. ``inner`` encodes a stretch that is not at the start of the string: for a
    Metaspace pre-tokenizer that prepends ``▁`` to the first word only (``prepend_scheme``
    "first"), the whole string's later stretches get none, and neither does ``inner``."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        state = json.loads(tokenizer.to_str())
        self.first = Tokenizer.from_str(json.dumps(state))
        changed = _prepend_never(state.get("pre_tokenizer"))
        self.inner = Tokenizer.from_str(json.dumps(state)) if changed else self.first
        for tok in {id(self.first): self.first, id(self.inner): self.inner}.values():
            tok.encode_special_tokens = True
            tok.no_truncation()
            tok.no_padding()

    def encode(self, text: str, at_start: bool):
        return (self.first if at_start else self.inner).encode(text, add_special_tokens=False)


def text_tokenizer(tokenizer) -> TextTokenizer:
    """The ``TextTokenizer`` of ``tokenizer`` (a ``tokenizers.Tokenizer``)."""
    return TextTokenizer(tokenizer)


def _prepend_never(node) -> bool:
    """Set every Metaspace ``prepend_scheme`` "first" under ``node`` to "never"; True if any."""
    if isinstance(node, list):
        return any([_prepend_never(x) for x in node])
    if not isinstance(node, dict):
        return False
    hit = node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first"
    if hit:
        node["prepend_scheme"] = "never"
    return any([hit] + [_prepend_never(x) for x in node.values()])


def encode_turn(tokenizer, as_text, template: str, prompt: str, image_token: str, n_image: int,
                add_special_tokens: bool = True) -> list[int]:
    """Ids of ``prompt`` in ``template`` (image token expanded to ``n_image`` copies), the user's
    text tokenized as text: a ``</s>``, ``<|im_end|>`` or ``[INST]`` typed in a prompt becomes the
    ids that spell it, never the control id, so a client cannot end its turn or fake the
    assistant's. ``tokenizer`` is the checkpoint's ``tokenizers.Tokenizer``, ``as_text`` its
    ``TextTokenizer``, or a function returning it (called only for a prompt that needs it).

    A prompt that holds no special-token string encodes as the whole rendered string, exactly
    what the checkpoint's processor gives. Otherwise the text is cut at the template's own added
    tokens (found in the template pieces alone); those stay control ids, and each stretch between
    them, the user's text included, is encoded by ``as_text``, the same stretches the tokenizer
    itself cuts the string into. ``InputError`` if the user's text still yields a control id
    (the unknown token aside: a character the vocabulary lacks is not a turn marker)."""
    render(template, prompt, image_token)  # the prompt's own checks
    pieces = template.replace(image_token, image_token * n_image).split("{prompt}")
    whole = prompt.join(pieces)
    enc = tokenizer.encode(whole, add_special_tokens=add_special_tokens)
    users = _user_spans(pieces, len(prompt))
    specials = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    typed = [(a, b) for i, (a, b) in zip(enc.ids, enc.offsets) if i in specials and specials[i] in whole[a:b]]
    if not any(_overlaps(span, users) for span in typed):
        return list(enc.ids)
    unk = getattr(tokenizer.model, "unk_token", None)
    controls = set(specials) - ({tokenizer.token_to_id(unk)} if unk else set())
    return _encode_sections(tokenizer, as_text, pieces, prompt, users, controls, add_special_tokens)


def _user_spans(pieces: list[str], n: int) -> list[tuple[int, int]]:
    spans, at = [], 0
    for piece in pieces[:-1]:
        at += len(piece)
        spans.append((at, at + n))
        at += n
    return spans


def _overlaps(span, spans) -> bool:
    return any(span[0] < b and a < span[1] for a, b in spans)


def _encode_sections(tokenizer, as_text, pieces, prompt, users, controls, add_special_tokens) -> list[int]:
    from tokenizers import Encoding

    as_text = as_text() if callable(as_text) else as_text
    hard, at = [], 0  # (start, end) of the template's added tokens in the whole string
    added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
    for piece in pieces:
        enc = tokenizer.encode(piece, add_special_tokens=False)  # an unknown character's <unk> is not one
        hard += [(at + a, at + b) for i, (a, b) in zip(enc.ids, enc.offsets) if added.get(i, "\0") in piece[a:b]]
        at += len(piece) + len(prompt)
    whole = prompt.join(pieces)
    parts, start = [], 0
    for a, b in hard + [(len(whole), len(whole))]:
        if a > start:
            parts.append(as_text.encode(whole[start:a], at_start=start == 0))
            injected = [i for i in parts[-1].ids if i in controls]
            if injected and _overlaps((start, a), users):
                raise InputError(f"prompt: encodes to control token id {injected[0]}; expected plain text")
        if b > a:
            parts.append(tokenizer.encode(whole[a:b], add_special_tokens=False))
        start = b
    return list(tokenizer.post_process(Encoding.merge(parts), add_special_tokens=add_special_tokens).ids)
