"""Token texts as the atlas stores them (issue 11 bug 2): a byte-level BPE token that is not valid
UTF-8 on its own is shown as its bytes, <0xNN>, never as a '�' that looks like every other one."""

from __future__ import annotations

from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from atlas.ingest.store import vocab_texts


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    text = ["the café’s naïve résumé — “quoted” text", "the cat sat on the mat"] * 50
    bpe.train_from_iterator(text, vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")


def test_partial_utf8_tokens_show_their_bytes_and_whole_characters_stay_text():
    tok = _byte_level_tokenizer()
    texts = vocab_texts(tok)
    assert not any("\ufffd" in t for t in texts)  # no token reads as the replacement character
    # every single-byte token past ASCII is a lone UTF-8 lead or continuation byte: its own <0xNN>
    for byte in (0x80, 0x99, 0xE2, 0xC3):
        ids = [i for i in range(len(tok)) if tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(i)) == i
               and tok.decode([i]) == "\ufffd" and len(tok.convert_ids_to_tokens(i)) == 1]
        shown = {texts[i] for i in ids}
        assert f"<0x{byte:02X}>" in shown, (hex(byte), sorted(shown)[:10])
    # tokens that decode to whole characters keep their text
    assert " the" in texts and "é" in texts
    # distinct byte tokens stay distinct
    lone = [t for t in texts if t.startswith("<0x") and len(t) == 6]
    assert len(lone) == len(set(lone)) >= 64
