"""The prompt template a LLaVA checkpoint expects (torch-free)."""

from __future__ import annotations

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
