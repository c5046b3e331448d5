"""Step 1 of the paper: raw datasets to Yes/No instruction records, splits and K-shot draws."""
