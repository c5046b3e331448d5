"""Models shared by tuning and evaluation: loading (LoRA, quantisation), tokenization, the tiny LLaMA.

Below both `tuning` (which measures each phase's effect with `evaluation`'s scorer) and `evaluation`, so neither
imports the other's package back."""
