"""The incremental detokenizer (``feather.runtime.Detokenizer``, ``PromptEncoder.stream()``):
its pieces join to ``decode`` of all the ids (multi-byte characters, special tokens, a
SentencePiece decoder's spacing and byte fallback), each call decodes a window whose size
does not grow with the answer, and ``generate(on_token=...)`` / ``feather-run --stream``
use it instead of decoding the whole answer per token."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feather.runtime import Detokenizer, Pipeline, preprocess
from feather.runtime.cli import main as feather_run

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)
MULTIBYTE = "café, naïve — 日本語のテキスト 🙂👍🏽 €€ Ωμέγα"
LENGTHS = (12, 48)  # two answer lengths: the widest decode per token must be the same for both


class CountingTokenizer:
    """A tokenizer that records how many ids each ``decode`` call was given."""

    def __init__(self, tokenizer):
        self.inner, self.calls = tokenizer, []

    def decode(self, ids, *args, **kwargs):
        self.calls.append(len(ids))
        return self.inner.decode(ids, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def streaming_calls(calls: list[int], n_tokens: int) -> list[int]:
    """``calls`` less the one decode of the whole answer (``Result.text``), which must be there once."""
    assert calls.count(n_tokens) == 1, (n_tokens, calls)
    rest = list(calls)
    rest.remove(n_tokens)
    return rest


def assert_constant_per_token(widths: dict[int, list[int]]) -> None:
    """``widths``: answer length -> ids per decode call while streaming. The widest call is
    the same at every length, and the calls (and ids decoded) grow linearly."""
    widest = {n: max(calls) for n, calls in widths.items()}
    assert len(set(widest.values())) == 1, widest
    for n, calls in widths.items():
        assert len(calls) <= 2 * n and sum(calls) <= 12 * n, (n, calls)


def pieces(detok: Detokenizer, ids) -> list[str]:
    return [detok.put(i) for i in ids] + [detok.flush()]


@pytest.fixture(scope="module")
def encoder(export_feather):
    from feather.manifest import load_manifest

    m = load_manifest(export_feather)
    return preprocess.PromptEncoder(export_feather / m.tokenizer, m.prompt, max_seq=m.max_seq)


def _text_ids(tokenizer, texts) -> list[int]:
    return [i for t in texts for i in tokenizer.encode(t, add_special_tokens=False).ids]


# ---- the tiny export's tokenizer (byte-level BPE) ----


@SETTINGS
@given(data=st.data(), window=st.integers(1, 9))
def test_any_ids_join_to_decode(encoder, data, window):
    """Random ids: bytes that are not UTF-8, cut characters, special tokens anywhere."""
    vocab = encoder.tokenizer.get_vocab_size(with_added_tokens=True)
    ids = data.draw(st.lists(st.integers(0, vocab - 1), max_size=80))
    assert "".join(pieces(Detokenizer(encoder, encoder.special_ids, window), ids)) == encoder.decode(ids)


@SETTINGS
@given(texts=st.lists(st.text(max_size=12) | st.sampled_from(MULTIBYTE.split()), max_size=8),
       special=st.lists(st.booleans(), max_size=8), window=st.integers(1, 9))
def test_text_ids_join_to_decode_and_never_stream_a_cut_character(encoder, texts, special, window):
    ids = []
    for i, t in enumerate(texts):
        ids += _text_ids(encoder.tokenizer, [t])
        if i < len(special) and special[i]:
            ids.append(encoder.spec.image_token_id)  # a special token: decode skips it
    out = pieces(encoder.stream() if window == 8 else Detokenizer(encoder, encoder.special_ids, window), ids)
    assert "".join(out) == encoder.decode(ids)
    if "\ufffd" not in "".join(texts):
        assert not any("\ufffd" in p for p in out)  # valid text never shows a half character


def test_a_multibyte_character_waits_for_its_last_byte(encoder):
    ids = _text_ids(encoder.tokenizer, [MULTIBYTE])
    assert len(ids) > len(MULTIBYTE.encode()) / 2  # the tiny vocabulary spells most of it byte by byte
    out = pieces(encoder.stream(), ids)
    assert "".join(out) == MULTIBYTE and "" in out[:-1]  # some ids completed no character yet
    assert "🙂" in out and not any("\ufffd" in p for p in out)


def test_flush_gives_a_cut_character_at_the_end(encoder):
    ids = _text_ids(encoder.tokenizer, ["ok 🙂"])[:-1]  # the emoji's last byte is missing
    detok = encoder.stream()
    assert "".join(detok.put(i) for i in ids) == "ok "
    assert detok.flush() == encoder.decode(ids)[len("ok "):] and detok.flush() == ""


def test_each_decode_sees_a_window_not_the_answer(encoder):
    counting = CountingTokenizer(encoder.tokenizer)  # tokenizers' decode skips special tokens by default
    text = MULTIBYTE * 20 + " the end"
    ids = _text_ids(encoder.tokenizer, [text])
    detok = Detokenizer(counting, encoder.special_ids)
    assert "".join(pieces(detok, ids)) == text
    assert len(ids) > 500 and max(counting.calls) <= detok.window + 4  # 4: the longest UTF-8 character
    assert len(counting.calls) <= 2 * len(ids)


def test_special_tokens_are_never_decoded(encoder):
    counting = CountingTokenizer(encoder)
    after = _text_ids(encoder.tokenizer, [" after"])
    ids = [encoder.spec.image_token_id] * 1000 + after
    assert "".join(pieces(Detokenizer(counting, encoder.special_ids), ids)) == " after"
    assert max(counting.calls) <= len(after)


# ---- a SentencePiece-style tokenizer: Llama's decoder, byte fallback and a dropped leading space ----


@pytest.fixture(scope="module")
def llama_tokenizer():
    """Llama 2's tokenizer.json shape on a tiny vocabulary: ``▁`` for spaces, <0xNN> byte
    tokens for what the vocabulary lacks, the first leading space stripped on decode."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base = Tokenizer(models.BPE())
    base.normalizer = norm
    base.train_from_iterator(["the cat sat on the mat", "café au lait", "hello world"] * 10,
                             trainers.BpeTrainer(vocab_size=100, show_progress=False))
    model = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token in model["vocab"]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    enc = tok.encode(" 🙂 €")  # "▁▁🙂▁€": the space of Prepend("▁") is dropped again on decode
    assert "<0xF0>" in enc.tokens and tok.decode(enc.ids) == " 🙂 €"
    return tok


@SETTINGS
@given(texts=st.lists(st.text(max_size=12) | st.sampled_from(MULTIBYTE.split() + [" the", "  two", "€€"]),
                      max_size=8), eos=st.lists(st.booleans(), max_size=8), window=st.integers(1, 9))
def test_sentencepiece_byte_fallback_and_spaces_join_to_decode(llama_tokenizer, texts, eos, window):
    ids = []
    for i, t in enumerate(texts):
        ids += _text_ids(llama_tokenizer, [t])
        if i < len(eos) and eos[i]:
            ids.append(2)
    out = pieces(Detokenizer(llama_tokenizer, [0, 1, 2], window), ids)
    assert "".join(out) == llama_tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in out) or "\ufffd" in "".join(texts)


def test_context_starts_where_a_character_started(llama_tokenizer):
    """The window once kept only the last id as context: after "€" spelled in byte tokens,
    that id is <0xAC>, and the next "€" decoded with it as three U+FFFD."""
    ids = _text_ids(llama_tokenizer, ["a €€ b €€€"])
    for window in range(1, 10):
        out = pieces(Detokenizer(llama_tokenizer, [0, 1, 2], window), ids)
        assert "".join(out) == llama_tokenizer.decode(ids) == "a €€ b €€€"


# ---- the pipeline and feather-run --stream ----


def test_generate_pieces_join_to_the_text_and_match_stream(export_feather, sample_image):
    pipe = Pipeline.load(export_feather)
    got = []
    result = pipe.generate(sample_image, "What is in this image?", 48, on_token=lambda t, p: got.append((t, p)))
    assert [t for t, _ in got] == result.tokens and "".join(p for _, p in got) == result.text
    assert [p for _, p in got if p] == list(pipe.stream(sample_image, "What is in this image?", 48))


def test_run_stream_decodes_a_window_per_token(export_feather, monkeypatch, capsys):
    """feather-run --stream: the same text as without --stream, and the widest decode per
    token is the same for a short and a long answer (it once decoded the whole answer)."""
    made, load = [], preprocess._load_tokenizer

    def counting(path):
        made.append(CountingTokenizer(load(path)))
        return made[-1]

    monkeypatch.setattr(preprocess, "_load_tokenizer", counting)
    widths = {}
    for n in LENGTHS:
        assert feather_run([str(export_feather), "--max-new-tokens", str(n), "--stream", "--json"]) == 0
        *lines, final = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(final["tokens"]) == n and "".join(p["piece"] for p in lines) == final["text"]
        widths[n] = streaming_calls(made[-1].calls, n)
    assert_constant_per_token(widths)
    n = LENGTHS[-1]
    assert feather_run([str(export_feather), "--max-new-tokens", str(n), "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert feather_run([str(export_feather), "--max-new-tokens", str(n), "-q"]) == 0
    assert streamed == capsys.readouterr().out  # the answer and one newline, byte for byte
