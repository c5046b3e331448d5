"""Loading the base model and tokenizer, quantisation, and LoRA / full fine-tuning setup.

The same code serves the tiny local LLaMA of the tests and `--base_model huggyllama/llama-7b`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from ..errors import InputError

logger = logging.getLogger(__name__)

# LoRA targets of `--lora_target_modules auto`, by `config.model_type` (TALLRec used q_proj,v_proj on LLaMA).
# Architectures not listed fall back to peft's own table.
AUTO_TARGET_MODULES = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "baichuan": ["W_pack"],
    "chatglm": ["query_key_value"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_exists(path: str, what: str) -> None:
    # A local-looking path that is missing is a typo, not a hub id: say so instead of trying the hub.
    if (path.startswith((".", "/", "~")) or path.count("/") > 1) and not Path(path).expanduser().exists():
        raise InputError(f"{what} {path}: directory not found")


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "left"):
    """The model's tokenizer with a pad token (the EOS or UNK token when it has none)."""
    from transformers import AutoTokenizer

    _check_exists(path, "--base_model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"--base_model {path}: cannot load the tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        # Padding is always masked out, so any existing token will do; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if tokenizer.pad_token_id is None:
            raise InputError(f"--base_model {path}: the tokenizer has no pad, EOS or UNK token to pad with")
    tokenizer.padding_side = padding_side
    return tokenizer


def quantization_config(load_in_4bit: bool, load_in_8bit: bool):
    """A BitsAndBytesConfig, or None; an InputError where bitsandbytes cannot run (no CUDA, not installed)."""
    if not (load_in_4bit or load_in_8bit):
        return None
    flag = "--load_in_4bit" if load_in_4bit else "--load_in_8bit"
    if load_in_4bit and load_in_8bit:
        raise InputError("--load_in_4bit and --load_in_8bit exclude each other")
    if not torch.cuda.is_available():
        raise InputError(f"{flag} needs a CUDA GPU (bitsandbytes); none is available on this machine")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise InputError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(model_args, device_map=None):
    """The causal LM of `model_args.base_model` (see arguments.ModelArguments)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    _check_exists(model_args.base_model, "--base_model")
    quant = quantization_config(model_args.load_in_4bit, model_args.load_in_8bit)
    kwargs = {"trust_remote_code": model_args.trust_remote_code}
    kwargs["dtype"] = "auto" if model_args.torch_dtype == "auto" else DTYPES[model_args.torch_dtype]
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map or {"": torch.cuda.current_device()}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(model_args.base_model, **kwargs)
    except (OSError, SafetensorError) as exc:
        raise InputError(f"--base_model {model_args.base_model}: cannot load ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise InputError(
                f"--base_model {model_args.base_model}: the model ships its own code; pass --trust_remote_code "
                "if you trust it"
            ) from None
        raise
    return model


def resolve_target_modules(model, spec: str):
    """`auto` -> the architecture's attention projections; `all-linear`; or an explicit comma list."""
    spec = spec.strip()
    if spec == "all-linear":
        return "all-linear"
    if spec != "auto":
        modules = [m.strip() for m in spec.split(",") if m.strip()]
        names = {name.split(".")[-1] for name, _ in model.named_modules()}
        missing = [m for m in modules if m not in names]
        if missing:
            raise InputError(
                f"--lora_target_modules: {', '.join(missing)} not found in {model.config.model_type} "
                f"(its modules include {', '.join(sorted(n for n in names if n)[:12])})"
            )
        return modules
    model_type = model.config.model_type
    if model_type in AUTO_TARGET_MODULES:
        return AUTO_TARGET_MODULES[model_type]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise InputError(
        f"--lora_target_modules auto: no default for model type {model_type!r}; "
        "pass all-linear or a comma-separated list of module names"
    )


def choose_attn_implementation(requested: str | None) -> tuple[str, str]:
    """(the attention kernel for training, why): the one asked for, else flash_attention_2 where it can run (the
    flash-attn package and a CUDA GPU), else sdpa. The caller logs it once the model is set up."""
    if requested:
        return requested, "--attn_implementation"
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2", "flash-attn installed"
    return "sdpa", ("no CUDA GPU" if not torch.cuda.is_available() else "flash-attn not installed") + \
        " for flash_attention_2"


def enable_checkpointing(model, fraction: float = 1.0, kwargs: dict | None = None) -> dict:
    """Gradient checkpointing of the first `fraction` of the decoder layers (the rest keep their activations),
    non-reentrant unless `kwargs` say otherwise. Returns the checkpoint kwargs used."""
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if fraction < 1:
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        keep = math.ceil(fraction * len(layers))
        for layer in layers[keep:]:
            layer.gradient_checkpointing = False
        logger.info("gradient checkpointing: the first %d of %d layers", keep, len(layers))
    return kwargs


def input_grads_for_checkpointing(model, reentrant: bool) -> None:
    """Re-entrant checkpointing of a LoRA model needs the embeddings' output to require grad (else no gradient
    reaches the adapters of a checkpointed layer); non-reentrant checkpointing does not, and transformers and peft
    turn it on anyway, which costs the input gradient of the first layer: turned off again there."""
    base = model.get_base_model()
    if reentrant:
        base.enable_input_require_grads()
    else:
        base.disable_input_require_grads()


def prepare_for_training(model, lora_args, gradient_checkpointing: bool = False, checkpoint_fraction: float = 1.0,
                         checkpoint_kwargs: dict | None = None):
    """LoRA (new, or continued from `--init_adapter`) or full fine-tuning. Returns the model to train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = getattr(model, "is_quantized", False) or getattr(model, "is_loaded_in_4bit", False)
    if lora_args.finetune == "full":
        if quantized:
            raise InputError("--finetune full cannot train a 4/8-bit model; use LoRA or drop --load_in_4bit/8bit")
        if lora_args.init_adapter:
            # Full tuning after a LoRA phase: fold the adapter into the weights first.
            model = load_adapter(model, lora_args.init_adapter).merge_and_unload()
        for p in model.parameters():
            p.requires_grad_(True)
        if gradient_checkpointing:
            enable_checkpointing(model, checkpoint_fraction, checkpoint_kwargs)
        return model
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        checkpoint_kwargs = enable_checkpointing(model, checkpoint_fraction, checkpoint_kwargs)
    if lora_args.init_adapter:
        model = load_adapter(model, lora_args.init_adapter, is_trainable=True)
    else:
        config = LoraConfig(
            r=lora_args.lora_r,
            lora_alpha=lora_args.lora_alpha,
            lora_dropout=lora_args.lora_dropout,
            target_modules=resolve_target_modules(model, lora_args.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    if gradient_checkpointing:
        input_grads_for_checkpointing(model, checkpoint_kwargs["use_reentrant"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / max(total, 1))
    if trainable == 0:
        raise InputError("no trainable parameters: check --lora_target_modules / --init_adapter")
    return model


def load_adapter(model, adapter_dir: str, is_trainable: bool = False):
    """A saved LoRA adapter on top of `model` (PeftModel.from_pretrained)."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a .safetensors header (no tensor is read)."""
    import struct

    from ..validation import check_safetensors_complete

    check_safetensors_complete(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def model_skeleton(model_args):
    """The base model's modules on the meta device: shapes without loading (or allocating) any weight."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_args.base_model, trust_remote_code=model_args.trust_remote_code)
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"--base_model {model_args.base_model}: cannot read its config "
                         f"({' '.join(str(exc).split())[:200]})") from None


def check_weights_fit(weights_dir, model_args, flag: str, skeleton=None) -> None:
    """A LoRA adapter or a full-model checkpoint in `weights_dir` fits the base model, checked from the file
    headers and a weightless copy of the base model before any weight loads. The error names the base model
    the weights were made for (adapter_config.json / config.json) and the one given."""
    path = Path(weights_dir)
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        made_for = _read_json(adapter_cfg).get("base_model_name_or_path")
        weights = path / "adapter_model.safetensors"
    else:
        made_for = _read_json(path / "config.json").get("_name_or_path") if (path / "config.json").is_file() else None
        weights = path / "model.safetensors"
    if not weights.is_file():
        if adapter_cfg.is_file() and not (path / "adapter_model.bin").is_file():
            raise InputError(f"{flag} {path}: no adapter_model.safetensors (incomplete adapter directory)")
        return  # sharded or .bin weights: transformers/peft check those while loading
    shapes = _safetensors_shapes(weights)
    skeleton = skeleton if skeleton is not None else model_skeleton(model_args)
    expected = {name: list(t.shape) for name, t in skeleton.state_dict().items()}
    problem = None
    for key, shape in shapes.items():
        if adapter_cfg.is_file():
            parts = key.removeprefix("base_model.model.").split(".")
            if len(parts) < 3 or parts[-2] not in ("lora_A", "lora_B"):
                continue
            name = ".".join(parts[:-2])
            try:
                in_f, out_f = _in_out_features(skeleton.get_submodule(name))
            except AttributeError:
                problem = f"it adapts {name}, which the model does not have"
                break
            if in_f is None:
                continue
            if (parts[-2] == "lora_A" and shape[-1] != in_f) or (parts[-2] == "lora_B" and shape[0] != out_f):
                problem = f"{key} has shape {shape}, the model's {name} maps {in_f} -> {out_f} features"
                break
        elif key in expected and list(shape) != expected[key]:
            problem = f"{key} has shape {shape}, the model needs {expected[key]}"
            break
    if problem:
        raise InputError(f"{flag} {path}: made for base model {made_for or '(not recorded)'}, "
                         f"not for --base_model {model_args.base_model} ({problem})")


def _in_out_features(module) -> tuple[int | None, int | None]:
    """(in, out) features of a linear layer: nn.Linear, or GPT-2's Conv1D (weight stored transposed)."""
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    if hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        return module.weight.shape[0], module.nf
    return None, None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def load_for_inference(model_args, adapter: str | None = None, device: str | None = None):
    """(model, tokenizer) ready for scoring: eval mode, on `device` (default: CUDA when available)."""
    tokenizer = load_tokenizer(model_args.base_model, model_args.trust_remote_code)
    if adapter:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise InputError(f"--adapter {adapter}: not a LoRA adapter directory (no adapter_config.json)")
        check_weights_fit(adapter, model_args, "--adapter")
    # device "auto": spread a model too large for one GPU over all of them (accelerate's device_map)
    model = load_base_model(model_args, device_map="auto" if device == "auto" else None)
    if adapter:
        model = load_adapter(model, adapter)
    placed = getattr(model, "is_quantized", False) or device == "auto"
    if not placed:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
    model.eval()
    return model, tokenizer
