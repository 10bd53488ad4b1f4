#!/usr/bin/env python3
"""Writes a tiny llama-architecture model as GGUF, with random weights drawn from a seed.

    python3 tests/llama/make_model.py --seed 1 --out models/v1.gguf

The model is nonsense on purpose: the tests need a *real* llama.cpp server (its HTTP layer,
its loading, its tokenizer, its streaming) and two versions whose answers differ, not a model
that talks. Two seeds give two versions. Nothing is downloaded: the vocabulary is the 256
byte-level BPE tokens of GPT-2 (so any prompt tokenizes), a few dozen words built from them
by merges, and the chat control tokens; dims are tiny so a token costs well under a
millisecond on one CPU core.
"""

import argparse
import os

import numpy as np
from gguf import GGUFWriter, TokenType

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_FF = 128
N_CTX = 512

WORDS = (
    "the a an and or of to in on is are was blue green model server token stream "
    "release switch version live idle color hello world ping pong yes no ok llama "
    "chat answer question fast slow one two three red zero traffic proxy cut over"
).split()

SPECIAL = ["<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]

# ChatML-shaped, with the control tokens of this vocabulary: llama-cpp-python renders the
# messages with it when the server is started without --chat_format.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_to_unicode():
    """GPT-2's reversible map from bytes to printable characters (what its BPE tokens are)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def vocabulary():
    """Tokens, their types and the BPE merges that build every word token."""
    b2u = byte_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    seen = set(tokens)
    merges = []
    for word in WORDS:
        # Each word with and without its leading space ("Ġ" is the mapped space byte).
        for text in (word, " " + word):
            symbols = [b2u[b] for b in text.encode()]
            # Left to right: every prefix is a token, so the merges always apply.
            prefix = symbols[0]
            for s in symbols[1:]:
                merged = prefix + s
                if merged not in seen:
                    merges.append(f"{prefix} {s}")
                    tokens.append(merged)
                    seen.add(merged)
                prefix = merged
    types = [TokenType.NORMAL] * len(tokens)
    first_special = len(tokens)
    tokens += SPECIAL
    types += [TokenType.CONTROL] * len(SPECIAL)
    return tokens, types, merges, first_special


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tokens, types, merges, first_special = vocabulary()
    n_vocab = len(tokens)
    bos, eos, im_end = first_special, first_special + 1, first_special + 3

    rng = np.random.default_rng(args.seed)

    def w(rows, cols):
        # numpy shape (out, in), as the converters write it; GGUFWriter stores it reversed
        # (ggml order). Scaled so activations keep a sane size through the layers.
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    wr = GGUFWriter(tmp, "llama")
    wr.add_name(f"cutover-test-tiny-llama-seed{args.seed}")
    wr.add_context_length(N_CTX)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(N_LAYER)
    wr.add_feed_forward_length(N_FF)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_HEAD)
    wr.add_rope_dimension_count(N_EMBD // N_HEAD)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_vocab_size(n_vocab)
    wr.add_file_type(0)  # all F32

    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("default")
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(bos)
    wr.add_eos_token_id(eos)
    wr.add_eot_token_id(im_end)
    wr.add_add_bos_token(False)
    wr.add_chat_template(CHAT_TEMPLATE)

    emb = rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32)
    out = w(n_vocab, N_EMBD) * 4.0
    # Only printable ASCII and words come out. Dimension 0 of every embedding carries a large
    # constant that the residual stream keeps to the last layer; the tokens the model must not
    # emit weigh it strongly negative. Left free, a random model emits bytes >= 0x80 that never
    # form valid UTF-8, and llama-cpp-python's streaming path then slows down quadratically
    # with the answer length (docs/llama.md); the end tokens are blocked too, so every answer
    # runs to max_tokens (finish_reason "length") and answers never come back empty.
    emb[:, 0] = 10.0
    out[:, 0] = 0.0
    blocked = [i for i in range(256) if not (0x20 <= i < 0x7F)] + list(range(first_special, n_vocab))
    out[blocked, 0] = -8.0
    wr.add_tensor("token_embd.weight", emb)
    wr.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    wr.add_tensor("output.weight", out)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        wr.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        wr.add_tensor(p + "attn_q.weight", w(N_EMBD, N_EMBD))
        wr.add_tensor(p + "attn_k.weight", w(N_EMBD, N_EMBD))
        wr.add_tensor(p + "attn_v.weight", w(N_EMBD, N_EMBD))
        wr.add_tensor(p + "attn_output.weight", w(N_EMBD, N_EMBD))
        wr.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        wr.add_tensor(p + "ffn_gate.weight", w(N_FF, N_EMBD))
        wr.add_tensor(p + "ffn_up.weight", w(N_FF, N_EMBD))
        wr.add_tensor(p + "ffn_down.weight", w(N_EMBD, N_FF))

    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    # Atomic, so a test that finds the file never finds half of it.
    os.replace(tmp, args.out)
    print(f"{args.out}: {n_vocab} tokens, {len(merges)} merges, seed {args.seed}")


if __name__ == "__main__":
    main()
