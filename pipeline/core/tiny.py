"""Tiny randomly initialised model pairs that share a tokenizer (tests, smoke runs).

``python -m pipeline.core.tiny OUT_DIR`` writes ``OUT_DIR/source`` and ``OUT_DIR/target``:
Hugging Face directories a few hundred KB large, built in seconds with no download.
Source and target differ in depth, width, number of heads and head dimension, as the
real pairs do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "What is 12 + 7? 12 + 7 = 19. The answer is 19.",
    "def add(a, b):\n    return a + b\n",
    "The following is a multiple choice question about physics. Answer: B",
    "Question: Tom has 3 apples and buys 4 more. How many apples? The answer is 7.",
    "user assistant system 0123456789 + - * / = ( ) [ ] { } : ; , . ? !",
]


def build_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer with a chat template (trained in milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(family: str, vocab_size: int, layers: int, width: int, heads: int, kv_heads: int,
                seed: int = 0, tie: bool = False):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[family]
    config = cls(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                 num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                 head_dim=width // heads, max_position_embeddings=256, tie_word_embeddings=tie,
                 rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def write_pair(out: str | Path, family: str = "qwen2", seed: int = 0,
               source_shape: tuple[int, int, int, int] = (6, 64, 4, 2),
               target_shape: tuple[int, int, int, int] = (4, 48, 2, 1)) -> tuple[Path, Path]:
    """Write source and target dirs; shapes are (layers, width, heads, kv_heads)."""
    out = Path(out)
    tok = build_tokenizer()
    vocab = len(tok)
    paths = []
    for i, (role, shape) in enumerate((("source", source_shape), ("target", target_shape))):
        model = build_model(family, vocab, *shape, seed=seed + i)
        d = out / role
        model.save_pretrained(d)
        tok.save_pretrained(d)
        paths.append(d)
    return paths[0], paths[1]


def swap_tokens(model_dir: str | Path, out: str | Path, ids: tuple[int, int] = (100, 101)) -> Path:
    """A copy of a tiny model whose tokenizer swaps the tokens of two ids: half of a pair
    with mismatched vocabularies (the weights are untouched)."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    shutil.copytree(model_dir, out)
    vocab = build_tokenizer().get_vocab()
    by_id = sorted(vocab, key=vocab.get)
    a, b = by_id[ids[0]], by_id[ids[1]]
    swapped = {**vocab, a: vocab[b], b: vocab[a]}
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(swapped, unk_token=None)),
                                    eos_token="<|im_end|>", pad_token="<|endoftext|>")
    other.pre_tokenizer = pre_tokenizers.ByteLevel()
    other.chat_template = CHAT_TEMPLATE
    other.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--family", default="qwen2", choices=["qwen2", "llama"])
    args = ap.parse_args()
    src, tgt = write_pair(args.out, args.family)
    print(f"wrote {src} and {tgt}")


if __name__ == "__main__":
    main()
