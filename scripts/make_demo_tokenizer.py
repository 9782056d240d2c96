#!/usr/bin/env python3
"""Makes the bundled demo tokenizer in configs/tokenizer/ (a fixture script; gemma-train never runs
Python). Rerun it from the repository root with the project's .venv:

    .venv/bin/python scripts/make_demo_tokenizer.py

1. Writes a synthetic, seeded training corpus (English-like sentences, numbers, code, unicode,
   emoji, runs of spaces and newlines, tabs).
2. Trains a 4096-piece SentencePiece BPE model with Debian's `spm_train`, with the settings of
   Gemma's tokenizer (identity normalisation, no dummy prefix, whitespace kept, digits split,
   whitespace-only pieces allowed, byte fallback) and Gemma 4's special tokens as control symbols.
3. Writes the matching HF `tokenizer.json` the way transformers' Gemma converter does: vocab from
   the pieces, merges generated from the vocab ordered by piece score, the control pieces as
   special added tokens, normalizer Replace(" ", "▁"), decoder ▁ -> " " + byte fallback + fuse.
"""
import json
import pathlib
import random
import subprocess
import tempfile

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers.convert_slow_tokenizer import generate_merges
import sentencepiece as spm

OUT = pathlib.Path("configs/tokenizer")
VOCAB_SIZE = 4096
# Gemma 4's special tokens (gemma4-architecture.md §4.1), after <pad> <eos> <bos> <unk>.
CONTROL = ["<mask>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>", "<|tool>", "<tool|>",
           "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>', "<|image>",
           "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>", "<|video|>"]

WORDS = ("the of and to in is was for on that with as by at from it this be are have an or not which "
         "model train token layer weight adapter memory batch learning rate gradient loss data text "
         "people time year way day thing world life hand part child eye woman place work week case "
         "point government company number group problem fact river mountain city music history light "
         "small large long great little own other old right big high different early young important "
         "make know take see come think look want give use find tell ask seem feel try leave call "
         "quickly slowly carefully really often never always together again still already").split()
UNICODE = ["café", "naïve", "über", "Straße", "Ωmega", "αβγ", "привет", "日本語", "中文", "한국어",
           "नमस्ते", "😀", "🚀", "👍🏽", "—", "…", "°C", "€", "½"]
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        "if __name__ == \"__main__\":\n    main()\n", "{\"key\": [1, 2, 3], \"ok\": true}\n"]


SYLLABLES = ("ka to ri sa ne mo lu pi the an er in on ar st ch sh tr pl gr bl qu ex un re de pro con "
             "ment tion ing ly ous al ive ful less ness able ism ist ize ward some").split()


def lexicon(rng, size):
    """Pseudo-words from syllables: enough distinct words for a 4096-piece BPE vocabulary."""
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def corpus(rng):
    vocabulary = WORDS * 20 + lexicon(rng, 6000)
    lines = []
    for _ in range(40000):
        n = rng.randint(4, 18)
        # Zipf-like: early words of the list far more often than late ones.
        words = [vocabulary[min(int(rng.paretovariate(0.7)) - 1, len(vocabulary) - 1)] if rng.random() < 0.5
                 else rng.choice(vocabulary) for _ in range(n)]
        if rng.random() < 0.2:
            words.insert(rng.randrange(n), str(rng.randint(0, 100000)))
        if rng.random() < 0.15:
            words.insert(rng.randrange(n), rng.choice(UNICODE))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?", ",", ":"])
        if rng.random() < 0.05:
            sentence = sentence.replace(" ", "  ", 1)
        if rng.random() < 0.05:
            sentence = "    " + sentence
        lines.append(sentence)
        if rng.random() < 0.03:
            lines.append(rng.choice(CODE).rstrip("\n"))
    return "\n".join(lines) + "\n"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "corpus.txt").write_text(corpus(rng))
        (tmp / "control.txt").write_text("\n".join(CONTROL) + "\n")
        subprocess.run([
            "spm_train", f"--input={tmp / 'corpus.txt'}", f"--model_prefix={tmp / 'spm'}",
            f"--vocab_size={VOCAB_SIZE}", "--model_type=bpe", "--byte_fallback=true",
            "--normalization_rule_name=identity", "--add_dummy_prefix=false", "--remove_extra_whitespaces=false",
            "--split_digits=true", "--allow_whitespace_only_pieces=true", "--split_by_unicode_script=true",
            "--split_by_number=true", "--split_by_whitespace=true", "--character_coverage=1.0",
            "--pad_id=0", "--eos_id=1", "--bos_id=2", "--unk_id=3", "--pad_piece=<pad>", "--eos_piece=<eos>",
            "--bos_piece=<bos>", "--unk_piece=<unk>", f"--control_symbols_file={tmp / 'control.txt'}",
            "--num_threads=1", "--minloglevel=2"], check=True)
        (OUT / "tokenizer.model").write_bytes((tmp / "spm.model").read_bytes())

    sp = spm.SentencePieceProcessor(model_file=str(OUT / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab, scores)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    tok.save(str(OUT / "tokenizer.json"))
    (OUT / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>", "add_bos_token": False, "padding_side": "left",
        "model_max_length": 131072}, indent=2) + "\n")
    print(f"wrote {OUT}: {sp.get_piece_size()} pieces, {len(merges)} merges")


if __name__ == "__main__":
    main()
