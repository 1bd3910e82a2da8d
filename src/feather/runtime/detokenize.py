"""Incremental detokenization: the text of an answer as its token ids come, O(1) work per id.

    text = pipe.encoder.stream()  # a Detokenizer
    for token in tokens:
        print(text.put(token), end="")
    print(text.flush())

Decoding the whole answer again for every new token costs O(n) per token, O(n^2) per
answer. A ``Detokenizer`` decodes only a window: the ids since the last emitted boundary
plus the chunk of ids emitted just before it, as context (the approach of vLLM's
incremental detokenizer and HF's TextStreamer; onnxruntime-genai calls it a
``TokenizerStream``). Torch-free; it needs only a ``decode(ids) -> str``.
"""

from __future__ import annotations

from collections.abc import Iterable

_INCOMPLETE = "\ufffd"
"""What ``decode`` gives for bytes that do not (yet) form a character."""


class Detokenizer:
    """Turns token ids into text one id at a time; the pieces join to ``decode(all ids)``.

    ``tokenizer`` is anything with ``decode(ids) -> str`` that skips special tokens (a
    ``PromptEncoder``, or a ``tokenizers.Tokenizer``); ``special_ids`` are the ids it skips,
    which are then never decoded at all. ``put`` returns the text an id adds: "" while the
    text ends inside a multi-byte character (it waits for the rest) or the id adds nothing.
    ``flush`` returns what is still held back (a character cut short at the end).

    Why the pieces join exactly: the window starts at a boundary where the text so far was
    complete, and holds at least one chunk of already-emitted ids before the new ones, so
    the decoder's rules that look at neighbours (SentencePiece's leading space, which is
    dropped at the start of a text only; byte-fallback runs, decoded as one UTF-8 string)
    see what they would in the whole answer. Each call decodes at most ``window`` ids plus
    that chunk (usually one id); only a run of ids that ends inside a character, or adds
    no text, widens it until the text resumes. A byte-fallback run holding invalid UTF-8 is
    the one case no incremental decoder can follow: the whole run turns into U+FFFD
    characters once it ends, after its valid start was emitted.
    """

    def __init__(self, tokenizer, special_ids: Iterable[int] = (), window: int = 8):
        if window < 1:
            raise ValueError(f"window: {window}; expected >= 1")
        self._decode = tokenizer.decode
        self.special_ids, self.window = frozenset(int(i) for i in special_ids), window
        self._ids: list[int] = []  # the window: emitted ids (the context), then ids not emitted yet
        self._read = 0  # where the ids not emitted yet start in _ids
        self._sent = ""  # the window's text already emitted

    def put(self, token_id: int) -> str:
        """The text ``token_id`` adds to the answer ("" while a character is incomplete)."""
        token_id = int(token_id)
        if token_id in self.special_ids:
            return ""  # decode skips it wherever it stands
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if text.endswith(_INCOMPLETE) or len(text) <= len(self._sent):
            return ""  # wait for the rest of a multi-byte character, or for any text at all
        return self._emit(text)

    def flush(self) -> str:
        """The text held back so far: call once at the end of the answer."""
        if self._read == len(self._ids):
            return ""
        text = self._decode(self._ids)
        if len(text) <= len(self._sent) or not text.startswith(self._sent):
            return ""
        return self._emit(text)

    def _emit(self, text: str) -> str:
        piece = text[len(self._sent) :]
        if len(self._ids) > self.window:  # move the window: keep the chunk just emitted as context
            self._ids = self._ids[self._read :]
            self._read, self._sent = len(self._ids), self._decode(self._ids)
        else:
            self._read, self._sent = len(self._ids), text
        return piece
