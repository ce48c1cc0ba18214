#!/usr/bin/env python3
"""SentencePiece peer of bench_tokenizer: trains a SentencePiece BPE model of the same
vocabulary size on the same text and times its encoder with its own timers. One
human-readable block and one JSON line (the keys of bench_tokenizer) per vocabulary size.

usage: /usr/bin/python3 bench/data/peer_sentencepiece.py [corpus file or folder]
                                                         [--vocab 1024,4096] [--reps 5]

Configuration (the closest to tmoe's tokenizer SentencePiece allows): model_type=bpe,
byte_fallback=True (every byte is representable, as in tmoe), character_coverage=1.0,
normalization_rule_name=identity and remove_extra_whitespaces=False (no NFKC, spaces kept),
split_by_whitespace left on (pieces do not cross spaces, like tmoe's chunks), all lines
used for training (input_sentence_size above the line count, no shuffling), num_threads=2
for training. SentencePiece's vocabulary counts <unk>, <s>, </s>, the 256 byte pieces and
one piece per character it covers, so it has fewer merged pieces than tmoe at the same size.

Throughput: "whole text" is one encode() call on the whole corpus (newlines become byte
pieces); "line by line" is one encode() call on the list of lines (without their '\\n'),
on 1 and 2 threads (num_threads of SentencePieceProcessor.encode).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import sentencepiece as spm


def load_corpus(path):
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read(), 1
    data, files = [], 0
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if os.path.islink(p) or not os.path.isfile(p) or name.endswith(".dat"):
            continue
        with open(p, "rb") as f:
            b = f.read()
        if b"\0" in b:
            continue
        data.append(b)
        files += 1
    return b"".join(data), files


def median_seconds(reps, f):
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def quiet(fn):
    """Runs fn with stderr (SentencePiece's training log) sent to /dev/null."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        return fn()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", nargs="?", default="/usr/share/games/fortunes")
    ap.add_argument("--vocab", default="1024,4096")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    raw, files = load_corpus(args.corpus)
    # SentencePiece works on Unicode text; invalid UTF-8 (none in the fortunes) is replaced.
    text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    line_bytes = sum(len(l.encode("utf-8")) for l in lines)
    mb, line_mb = len(raw) / 1e6, line_bytes / 1e6
    print(f"corpus: {args.corpus} ({files} files, {len(raw)} bytes, {len(lines)} lines); "
          f"sentencepiece {spm.__version__}")

    with tempfile.TemporaryDirectory() as tmp:
        corpus_file = os.path.join(tmp, "corpus.txt")
        with open(corpus_file, "w", encoding="utf-8") as f:
            f.write(text)
        for vocab in [int(v) for v in args.vocab.split(",")]:
            prefix = os.path.join(tmp, f"spm_{vocab}")
            t0 = time.perf_counter()
            quiet(lambda: spm.SentencePieceTrainer.train(
                input=corpus_file, model_prefix=prefix, model_type="bpe", vocab_size=vocab,
                byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
                remove_extra_whitespaces=False, input_sentence_size=10 * len(lines) + 1000,
                shuffle_input_sentence=False, max_sentence_length=1 << 16, num_threads=2))
            train_s = time.perf_counter() - t0
            sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

            out = {}
            enc = {}
            for nt in (1, 2):
                enc[nt] = median_seconds(args.reps, lambda: out.__setitem__("whole", sp.encode(text, num_threads=nt)))
            line_s = {}
            for nt in (1, 2):
                line_s[nt] = median_seconds(args.reps, lambda: out.__setitem__("lines", sp.encode(lines, num_threads=nt)))
            whole_ids = out["whole"]
            line_tokens = sum(len(x) for x in out["lines"])
            dec_s = median_seconds(args.reps, lambda: out.__setitem__("back", sp.decode(whole_ids)))
            roundtrip = out["back"] == text
            bpt = len(raw) / len(whole_ids)
            line_bpt = line_bytes / line_tokens
            print(f"\nvocab {vocab}: train {train_s:.2f} s (2 threads)\n"
                  f"  encode whole text: {mb / enc[1]:.1f} MB/s (1 thread), {mb / enc[2]:.1f} MB/s (2 threads); "
                  f"{bpt:.3f} bytes/token\n"
                  f"  encode line by line: {line_mb / line_s[1]:.1f} MB/s (1 thread), "
                  f"{line_mb / line_s[2]:.1f} MB/s (2 threads); {line_bpt:.3f} bytes/token\n"
                  f"  decode: {mb / dec_s:.1f} MB/s; round trip {'exact' if roundtrip else 'NOT exact'}")
            print(json.dumps({
                "impl": "sentencepiece", "vocab": vocab, "corpus_bytes": len(raw),
                "train_s_1t": None, "train_s_2t": round(train_s, 3),
                "encode_mbs_1t": round(mb / enc[1], 2), "encode_mbs_2t": round(mb / enc[2], 2),
                "lines_mbs_1t": round(line_mb / line_s[1], 2), "lines_mbs_2t": round(line_mb / line_s[2], 2),
                "bytes_per_token": round(bpt, 4), "lines_bytes_per_token": round(line_bpt, 4),
                "decode_mbs": round(mb / dec_s, 2), "roundtrip": roundtrip}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
