"""Any HF causal LM as backbone: every architecture transformers builds from a config, as a tiny random model
with a trained tokenizer, goes through run_tuning (LoRA, auto target modules, two steps) and run_eval.
Baichuan and ChatGLM ship their own modelling code (trust_remote_code): for them the target-module mapping is
checked on a stand-in with their module names."""

import json

import pytest
import torch
from helpers import read_metrics, read_predictions
from safetensors.torch import load_file

import run_eval
import run_tuning
from tlrec_utils.evaluation.metrics import auc
from tlrec_utils.model.tiny_llm import iter_texts, train_tokenizer

# architecture -> (config class name, config kwargs, the attention projection(s) LoRA must wrap)
SMALL = dict(num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=1024)
BACKBONES = {
    "llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, **SMALL), {"q_proj", "v_proj"}),
    "mistral": ("MistralConfig", dict(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **SMALL),
                {"q_proj", "v_proj"}),
    "qwen2": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **SMALL),
              {"q_proj", "v_proj"}),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=1024), {"c_attn"}),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64, **SMALL), {"query_key_value"}),
}


@pytest.fixture(scope="module")
def tokenizer(synthetic):
    return train_tokenizer(list(iter_texts([synthetic[2]])), vocab_size=600)


def build_backbone(name, tokenizer, out_dir):
    import transformers

    cls_name, kwargs, _ = BACKBONES[name]
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **kwargs,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert model.config.model_type == name
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_tunes_with_auto_lora_targets_and_evaluates(name, tokenizer, synthetic, tmp_path):
    records = synthetic[0]
    (tmp_path / "train.json").write_text(json.dumps(records[:32]))
    (tmp_path / "test.json").write_text(json.dumps(records[160:184]))
    model_dir, out = tmp_path / "model", tmp_path / "lora"
    base = build_backbone(name, tokenizer, model_dir)
    linear_names = {n.split(".")[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    expected = BACKBONES[name][2]
    if name == "gpt2":  # GPT-2's projections are Conv1D, not nn.Linear
        linear_names = {n.split(".")[-1] for n, _ in base.named_modules()}
    assert expected <= linear_names
    rc = run_tuning.main([
        "--base_model", str(model_dir), "--train_files", str(tmp_path / "train.json"), "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_length", "256",
        "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0",
    ])  # fmt: skip
    assert rc == 0
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == expected
    weights = load_file(str(out / "adapter_model.safetensors"))
    wrapped = {key.split(".lora_")[0].split(".")[-1] for key in weights}
    assert wrapped == expected
    n_layers = base.config.num_hidden_layers
    assert len([k for k in weights if "lora_B" in k]) == n_layers * len(expected)
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at zero: it trained

    def evaluate(name, *adapter):
        assert run_eval.main([
            "--base_model", str(model_dir), *adapter, "--test_file", str(tmp_path / "test.json"),
            "--output_dir", str(tmp_path / name), "--metrics", "auc", "--batch_size", "8", "--device", "cpu",
        ]) == 0  # fmt: skip
        metrics = read_metrics(tmp_path / name)
        preds = read_predictions(tmp_path / name)
        assert len(preds) == 24 and all(0.0 < p["p_yes"] < 1.0 for p in preds)
        assert metrics["auc"] == pytest.approx(auc([p["label"] for p in preds], [p["p_yes"] for p in preds]))
        return metrics, [p["p_yes"] for p in preds]

    tuned, tuned_scores = evaluate("eval", "--adapter", str(out))
    base, base_scores = evaluate("eval_base")
    assert tuned["settings"]["adapter"] == str(out) and base["settings"]["adapter"] is None
    # run_eval scored with the adapter applied: its predictions are not the base model's
    assert max(abs(a - b) for a, b in zip(tuned_scores, base_scores)) > 1e-4


class _RemoteCodeStandIn(torch.nn.Module):
    """Module names of Baichuan (`W_pack`: fused q/k/v) and ChatGLM (`query_key_value`) as their remote code
    builds them, with the `config.model_type` their configs declare."""

    def __init__(self, model_type, attn_name):
        super().__init__()
        self.config = type("Config", (), {"model_type": model_type})()
        self.layers = torch.nn.ModuleList()
        for _ in range(2):
            block = torch.nn.Module()
            block.self_attn = torch.nn.Module()
            setattr(block.self_attn, attn_name, torch.nn.Linear(16, 48))
            block.self_attn.o_proj = torch.nn.Linear(16, 16)
            self.layers.append(block)


@pytest.mark.parametrize("model_type,attn_name", [("baichuan", "W_pack"), ("chatglm", "query_key_value")])
def test_remote_code_backbones_get_their_fused_attention_as_lora_target(model_type, attn_name):
    from peft import LoraConfig, inject_adapter_in_model

    from tlrec_utils.model.loading import resolve_target_modules

    stand_in = _RemoteCodeStandIn(model_type, attn_name)
    targets = resolve_target_modules(stand_in, "auto")
    assert targets == [attn_name]
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=targets), stand_in)
    wrapped = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == {attn_name}
