"""The scripts' `main()` on their defaults, fast."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"oto_hf_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_demo_prunes_saves_and_reloads_exactly(tmp_path, capsys):
    demo = load_script("demo")
    demo.main(demo.make_parser().parse_args(["--output_dir", str(tmp_path / "out"), "--sparsity", "0.3"]))
    printed = capsys.readouterr().out
    assert "[4/4] Saved to" in printed and "reloaded as OTOBertForQuestionAnswering" in printed
    zero_invariance = float(printed.split("max |pruned - zero-masked| = ")[1].split()[0])
    reload_diff = float(printed.split("max |reloaded - pruned| = ")[1].split()[0])
    assert zero_invariance <= 1e-5 and reload_diff <= 1e-6
    assert (tmp_path / "out" / "config.json").exists()


@pytest.mark.slow
def test_discovery_benchmark_small(capsys):
    bench = load_script("bench_discovery")
    bench.main(bench.make_parser().parse_args(["--layers", "2", "--hidden", "256", "--ffn", "688", "--heads", "4",
                                               "--kv-heads", "2"]))
    assert "all parameters still on meta: True" in capsys.readouterr().out
