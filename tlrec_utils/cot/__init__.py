"""Step 2 of the paper: CoT instruction data from a teacher LLM (candidates, three chained prompts, hit filter)."""
