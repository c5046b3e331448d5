"""Step 3 of the paper: CoT curriculum tuning and rec-tuning (source, then K-shot) inside HF Trainer."""
