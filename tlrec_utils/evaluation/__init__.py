"""Evaluation: AUC from P("Yes") at the first response token, sampled and per-user NDCG@10."""
