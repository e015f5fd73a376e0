"""Write a tiny llama-architecture GGUF model for the llama.cpp tests: no hub, no download.

    PYTHONPATH=CACHE/gguf-py python tests/llamacpp/make_model.py CACHE/models/ggml-vocab-llama-spm.gguf OUT.gguf

The vocabulary (tokens, scores, types, special ids) is copied from one of the
vocabulary-only GGUF files llama.cpp ships under models/; the weights are small
random numbers from a fixed seed, so the model is a few MB, loads at once,
generates (nonsense) text at thousands of tokens per second on a CPU, and
computes embeddings.  What the tests look at is the server's behaviour, not the
text: streaming, cancellation, slots, prompt caching, health.
"""

import sys

import gguf
import numpy as np

ARCH = "llama"
EMBED = 64
LAYERS = 2
HEADS = 4
HEADS_KV = 2
FEED_FORWARD = 128
CONTEXT = 4096
# A chat template llama-server can apply (ChatML); the vocabulary files carry none.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def copy_vocabulary(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> int:
    """The tokenizer.* fields of the vocabulary file, as they are; the vocabulary's size."""
    size = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            values = field.contents()
            size = max(size, len(values))
            writer.add_array(name, values)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, field.contents())
        elif kind == gguf.GGUFValueType.BOOL:
            writer.add_bool(name, bool(field.contents()))
        elif kind == gguf.GGUFValueType.FLOAT32:
            writer.add_float32(name, float(field.contents()))
        else:
            writer.add_uint32(name, int(field.contents()))
    return size


def main(vocabulary: str, out: str, seed: int = 1) -> None:
    reader = gguf.GGUFReader(vocabulary)
    writer = gguf.GGUFWriter(out, ARCH)
    writer.add_name("llmhop-test-tiny")
    vocab = copy_vocabulary(reader, writer)
    writer.add_chat_template(CHATML)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS_KV)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    rng = np.random.default_rng(seed)
    kv = EMBED // HEADS * HEADS_KV

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    # numpy shapes are ggml's dimensions reversed: token_embd is {EMBED, vocab}.
    writer.add_tensor("token_embd.weight", weights(vocab, EMBED))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, dtype=np.float32))
    writer.add_tensor("output.weight", weights(vocab, EMBED))
    for layer in range(LAYERS):
        block = "blk.%d." % (layer,)
        writer.add_tensor(block + "attn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(block + "attn_q.weight", weights(EMBED, EMBED))
        writer.add_tensor(block + "attn_k.weight", weights(kv, EMBED))
        writer.add_tensor(block + "attn_v.weight", weights(kv, EMBED))
        writer.add_tensor(block + "attn_output.weight", weights(EMBED, EMBED))
        writer.add_tensor(block + "ffn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(block + "ffn_gate.weight", weights(FEED_FORWARD, EMBED))
        writer.add_tensor(block + "ffn_up.weight", weights(FEED_FORWARD, EMBED))
        writer.add_tensor(block + "ffn_down.weight", weights(EMBED, FEED_FORWARD))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
