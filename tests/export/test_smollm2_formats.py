"""The real SmolLM2-135M (`OTO_HF_CACHE`, `scripts/assets.fetch_smollm2`), pruned unevenly, in the serving formats."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import assets
from oto_hf import construct_subnet, discover_groups
from oto_hf.saving import export_pruned
from tests.export.pruned_llms import widths

PROMPTS = ["The capital of Italy is", "def fibonacci(n):", "Once upon a time"]


@pytest.mark.slow
def test_smollm2_pruned_unevenly_generates_the_same_tokens_in_stock_and_decilm(tmp_path):
    """Random query heads, KV heads and neurons removed in each of the 30 layers (seeded): the stock folder (padded)
    and the DeciLM folder (FFN exact, attention padded) reload and generate the pruned model's greedy tokens."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    folder = assets.fetch_smollm2()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    groups = discover_groups(model, dict(tokenizer(PROMPTS[0], return_tensors="pt")))
    generator = torch.Generator().manual_seed(0)
    chosen = []
    for layer in range(model.config.num_hidden_layers):
        for kind, share in (("head", 0.4), ("kv_head", 0.34), ("neuron", 0.5)):
            members = [group.id for group in groups if group.layer == layer and group.kind == kind]
            count = int(torch.randint(0, int(share * len(members)) + 1, (1,), generator=generator))
            chosen += [members[i] for i in torch.randperm(len(members), generator=generator)[:count].tolist()]
    pruned = construct_subnet(model, groups, chosen)
    own = widths(pruned)
    assert len({w[:2] for w in own}) > 1 and len({w[2] for w in own}) > 10

    @torch.no_grad()
    def greedy(m):
        found = []
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            found.append(m.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist())
        return found

    expected = greedy(pruned)
    reports = {}
    for format in ("stock", "decilm"):
        reports[format] = export_pruned(pruned, tmp_path / format, tokenizer=tokenizer, format=format)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / format, trust_remote_code=True).eval()
        assert greedy(reloaded) == expected, format
    assert reports["stock"].padded_parameters > reports["decilm"].padded_parameters > 0
    assert reports["stock"].padded_kv_bytes_per_token >= reports["decilm"].padded_kv_bytes_per_token
