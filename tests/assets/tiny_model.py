"""A tiny llama-architecture GGUF with random weights, for serving with a real llama-server.

2 layers, width 64, 4 heads, a 259-token byte-level SentencePiece vocabulary (`<unk>`, `<s>`,
`</s>`, `<0x00>`…`<0xFF>`): about 469 KB, loads in well under a second and generates
thousands of (meaningless) tokens per second on one CPU core. The weights come from a fixed
seed, so every run writes the same file.

Usage: `python -m tests.assets.tiny_model OUT.gguf`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import gguf
import numpy as np

LAYERS = 2
WIDTH = 64
HEADS = 4
FEED_FORWARD = 128
CONTEXT = 2048
SEED = 20240611
# Qwen-style ChatML, so /v1/chat/completions renders prompts the way production models do.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def vocabulary() -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types of the byte-level SPM vocabulary."""
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    scores = [0.0] * len(tokens)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(path: str | Path) -> Path:
    """Write the tiny model to `path` (atomically) and return the path."""
    path = Path(path)
    tokens, scores, types = vocabulary()
    rng = np.random.default_rng(SEED)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(temporary), "llama")
    writer.add_name("mushishi-tiny-test-model")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are (rows, columns); GGUF stores them reversed, as llama.cpp expects.
    writer.add_tensor("token_embd.weight", weight(len(tokens), WIDTH))
    for block in range(LAYERS):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", ones(WIDTH))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{prefix}.{name}.weight", weight(WIDTH, WIDTH))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", ones(WIDTH))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(FEED_FORWARD, WIDTH))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(FEED_FORWARD, WIDTH))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(WIDTH, FEED_FORWARD))
    writer.add_tensor("output_norm.weight", ones(WIDTH))
    writer.add_tensor("output.weight", weight(len(tokens), WIDTH))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    temporary.chmod(0o644)
    temporary.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the tiny model to the path given on the command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.assets.tiny_model")
    parser.add_argument("output", type=Path, help="where to write the .gguf file")
    args = parser.parse_args(argv)
    written = write_tiny_model(args.output)
    print(f"{written} ({written.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
