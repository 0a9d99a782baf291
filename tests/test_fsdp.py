"""DHSPG under FSDP2 (`fully_shard`, 2 CPU processes over gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.utils.paths import REPO_ROOT


def run(out: Path, processes: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29541"]
    done = subprocess.run([*launcher, "-m", "tests.utils.fsdp_run", str(out)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fsdp")
    run(root / "one", 1)
    run(root / "two", 2)
    return root / "one", root / "two"


@pytest.mark.parametrize("variant, atol", [("sgd", 1e-5), ("adamw", 1e-3)])
def test_two_sharded_ranks_prune_and_save_like_one_process(runs, variant, atol):
    one, two = (folder / variant for folder in runs)
    single, sharded = (json.loads((folder / "result.json").read_text()) for folder in (one, two))
    assert sharded["world"] == 2 and single["world"] == 1
    assert sharded["zero"] == single["zero"] and len(single["zero"]) > 0
    assert sharded["forced"] == single["forced"] == 0

    weights = [torch.load(folder / "weights.pt", weights_only=True) for folder in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=atol, msg=name)

    # The saved folders: same files, same config, same (smaller) tensors, and they load to the same model.
    assert sorted(p.name for p in (one / "pruned").iterdir()) == sorted(p.name for p in (two / "pruned").iterdir())
    configs = [json.loads((folder / "pruned" / "config.json").read_text()) for folder in (one, two)]
    assert configs[0] == configs[1]
    tensors = [load_file(folder / "pruned" / "model.safetensors") for folder in (one, two)]
    assert {k: v.shape for k, v in tensors[0].items()} == {k: v.shape for k, v in tensors[1].items()}
    for name in tensors[0]:
        torch.testing.assert_close(tensors[1][name], tensors[0][name], rtol=0, atol=atol, msg=name)
    models = [
        AutoModelForCausalLM.from_pretrained(folder / "pruned", trust_remote_code=True).eval() for folder in (one, two)
    ]
    ids = torch.arange(10)[None]
    with torch.no_grad():
        logits = [model(input_ids=ids).logits for model in models]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=50 * atol)
