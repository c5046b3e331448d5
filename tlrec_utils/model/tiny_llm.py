"""Build a tiny, randomly initialised LLaMA with a tokenizer trained on the data, saved like any HF model.

Tests, demos and benchmarks load it through the normal `from_pretrained` path, so they exercise exactly
the code real users run with `--base_model huggyllama/llama-7b`:

    python -m tlrec_utils.model.tiny_llm --data prepared/ml-100k/train.json --output_dir models/tiny-llama

Two tokenizer styles: `bytelevel` (GPT-2/LLaMA-3 style byte-level BPE, the default) and `sentencepiece`
(LLaMA-1/2 style: metaspace pre-tokenizer, BOS prepended, byte fallback).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .. import prompts
from ..errors import InputError, cli_entry

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def iter_texts(paths):
    """Every string in the given JSON / JSONL files (records, CoT records, anything), plus the templates."""
    for template in prompts.TEMPLATES.values():
        yield from template.texts()
    yield f"{prompts.YES} {prompts.NO}"

    def strings(obj):
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from strings(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from strings(v)

    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield from strings(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise InputError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
            else:
                try:
                    yield from strings(json.load(f))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None


def train_tokenizer(texts, vocab_size: int = 4000, style: str = "bytelevel"):
    """A `PreTrainedTokenizerFast` with BOS/EOS/UNK/PAD, trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        add_bos = False
    elif style == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence(
            [decoders.Metaspace(replacement="▁", prepend_scheme="first"), decoders.ByteFallback(), decoders.Fuse()]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=max(vocab_size - 256, len(specials) + 1), special_tokens=specials, show_progress=False
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok = _with_byte_fallback_vocab(tok)
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
        add_bos = True
    else:
        raise InputError(f"unknown tokenizer style {style!r} (expected bytelevel or sentencepiece)")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.init_kwargs["add_bos_token"] = add_bos
    return fast


def _with_byte_fallback_vocab(tok):
    """Put the 256 byte tokens `<0x00>`..`<0xFF>` into the BPE vocabulary itself, right after the special
    tokens, as LLaMA's sentencepiece model has them. Registered as added (special) tokens instead, they would
    be dropped by `decode(skip_special_tokens=True)`, silently losing characters."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    specials = [t["content"] for t in spec["added_tokens"]]
    ordered = specials + [f"<0x{i:02X}>" for i in range(256)]
    ordered += [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in set(ordered)]
    spec["model"]["vocab"] = {t: i for i, t in enumerate(ordered)}
    for added in spec["added_tokens"]:
        added["id"] = spec["model"]["vocab"][added["content"]]
    return Tokenizer.from_str(json.dumps(spec))


def build_tiny_llama(
    data,
    output_dir,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 4000,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    tokenizer_style: str = "bytelevel",
):
    """Train the tokenizer, build a random `LlamaForCausalLM`, save both to `output_dir`."""
    texts = list(iter_texts(data))  # read (and validate) the data before the slow imports
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise InputError(f"--hidden_size {hidden_size} is not divisible by --num_heads {num_heads}")
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, style=tokenizer_style)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("saved tiny LLaMA (%d parameters, vocab %d) to %s", n_params, len(tokenizer), output_dir)
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True, help="JSON/JSONL files whose text trains the tokenizer")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=4000)
    parser.add_argument("--max_position_embeddings", type=int, default=2048)
    parser.add_argument("--tokenizer_style", choices=["bytelevel", "sentencepiece"], default="bytelevel")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_tiny_llama(
        args.data,
        args.output_dir,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        vocab_size=args.vocab_size,
        max_position_embeddings=args.max_position_embeddings,
        seed=args.seed,
        tokenizer_style=args.tokenizer_style,
    )


if __name__ == "__main__":
    cli_entry(main)()
