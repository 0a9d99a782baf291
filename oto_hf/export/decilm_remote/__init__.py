"""The configuration and modeling files that `save_pruned(..., format="decilm")` ships beside the weights.

They import only torch and transformers, so a DeciLM folder loads with `trust_remote_code=True` where oto_hf is not
installed.
"""
