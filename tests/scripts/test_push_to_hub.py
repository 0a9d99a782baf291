"""scripts/push_to_hub.py against a local Hub-compatible server (tests/utils/fake_hub.py), with the real client."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch

from oto_hf import construct_subnet, discover_groups, save_pruned
from tests.utils.asserts import random_nonuniform_ids
from tests.utils.fake_hub import FakeHub, FakeRepo
from tests.utils.scripts import SCRIPTS, load_script
from tests.utils.tiny_models import CASES

SCRIPT = SCRIPTS / "push_to_hub.py"


push = load_script("push_to_hub")


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A tiny BERT pruned non-uniformly and saved by save_pruned: config.json, model.safetensors, modeling file."""
    torch.manual_seed(0)
    model = next(case for case in CASES if case.name == "bert").build().eval()
    groups = discover_groups(model)
    pruned = construct_subnet(model, groups, random_nonuniform_ids(groups, seed=3))
    return save_pruned(pruned, tmp_path_factory.mktemp("push") / "tiny-bert-pruned")


@pytest.fixture
def folder(saved_folder, tmp_path):
    return Path(shutil.copytree(saved_folder, tmp_path / "tiny-bert-pruned"))


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


def _local_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _run(args: list[str], hub: FakeHub, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The script in a fresh process: huggingface_hub reads HF_ENDPOINT when it is imported."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGING_FACE_")) and key not in ("TRANSFORMERS_OFFLINE",)
    }
    clean.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),  # no cached login from this machine
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        # Anything but the fake Hub goes to a closed port and fails at once: no traffic leaves the machine.
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        ALL_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        **env,
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=180
    )


def test_push_over_lfs_writes_the_card_and_uploads_exact_bytes_privately(folder, hub, tmp_path):
    assert not (folder / "README.md").exists()
    result = _run(
        [
            "oto-tester/tiny-bert-pruned",
            str(folder),
            "--private",
            "--commit_message",
            "Prune 50% (test)",
            "--base_model",
            "google-bert/bert-base-uncased",
            "--license",
            "apache-2.0",
        ],
        hub,
        tmp_path,
        HF_TOKEN=hub.token,
        HF_HUB_DISABLE_XET="1",
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote the model card" in result.stdout and "Done: " in result.stdout

    repo = hub.repos["model:oto-tester/tiny-bert-pruned"]
    assert repo.private
    local = _local_files(folder)
    expected = {
        "config.json",
        "model.safetensors",
        "README.md",
        "kept_per_layer.png",
        "modeling_oto_bert.py",
        "no_op.py",
    }
    assert set(local) == expected
    assert repo.files == local  # every file, byte for byte
    assert {"model.safetensors", "kept_per_layer.png"} <= repo.lfs_files  # through the LFS batch API
    assert "config.json" not in repo.lfs_files and "README.md" not in repo.lfs_files
    (commit,) = repo.commits
    assert commit["summary"] == "Prune 50% (test)"
    assert hub.validated_readmes[0] == local["README.md"].decode("utf-8")
    metadata = huggingface_hub.metadata_load(folder / "README.md")
    assert metadata["base_model"] == "google-bert/bert-base-uncased" and metadata["license"] == "apache-2.0"
    paths = [path for _, path in hub.requests]
    assert paths[0] == "/api/whoami-v2" and "/oto-tester/tiny-bert-pruned.git/info/lfs/objects/batch" in paths
    assert hub.unhandled == []


def test_push_with_the_default_client_to_an_existing_repo_keeps_card_and_visibility(folder, tmp_path):
    """hf_xet enabled (the client default): upload_folder takes its pipelined path; the server asks for plain git."""
    (folder / "README.md").write_text("---\nlicense: mit\ntags:\n- mine\n---\n\n# My own card\n", encoding="utf-8")
    with FakeHub(lfs=False) as hub:
        hub.repos["model:oto-tester/existing"] = push_repo = FakeRepo("oto-tester/existing", "model", private=False)
        result = _run(["existing", str(folder), "--token", hub.token], hub, tmp_path)  # namespace from the token
    assert result.returncode == 0, result.stderr
    assert "Wrote the model card" not in result.stdout
    assert not push_repo.private  # --private not given; and create_repo answered 409 (exists)
    assert push_repo.files == _local_files(folder)
    assert push_repo.files["README.md"].startswith(b"---\nlicense: mit")
    assert push_repo.commits[0]["summary"] == "Upload OTO-pruned model (oto_hf)"
    assert ("POST", "/api/repos/create") in hub.requests and hub.unhandled == []


def test_dry_run_sends_nothing_and_writes_nothing(folder, hub, tmp_path):
    result = _run(["oto-tester/tiny", str(folder), "--dry_run", "--dataset", "rajpurkar/squad"], hub, tmp_path)
    assert result.returncode == 0, result.stderr
    assert hub.requests == [] and hub.repos == {}
    assert not (folder / "README.md").exists() and not (folder / "kept_per_layer.png").exists()
    out = result.stdout
    size = (folder / "model.safetensors").stat().st_size
    assert "model.safetensors" in out and f"{size / 1024:.1f} KB" in out and "config.json" in out
    assert "README.md" in out and "library_name: transformers" in out and "- rajpurkar/squad" in out
    assert "pipeline_tag: question-answering" in out and "- oto_hf" in out


def test_dry_run_reports_an_existing_card(folder, capsys):
    (folder / "README.md").write_text("---\nlicense: mit\nbase_model: org/base\n---\n\n# Card\n", encoding="utf-8")
    result = push.main(push.make_parser().parse_args(["me/x", str(folder), "--dry_run"]))
    assert result["metadata"] == {"license": "mit", "base_model": "org/base"} and result["generated"] == []
    assert dict(result["files"])["README.md"] == (folder / "README.md").stat().st_size
    assert "base_model: org/base" in capsys.readouterr().out


@pytest.fixture
def online(monkeypatch, tmp_path):
    """In-process Hub settings: online, no token anywhere (the tests' conftest turns offline mode on)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _main(*argv: str):
    return push.main(push.make_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda f: f / "nope", "does not exist"),
        (lambda f: f / "config.json", "is a file, not a folder"),
        (lambda f: (f / "config.json").unlink() or f, "has no config.json"),
        (lambda f: (f / "model.safetensors").unlink() or f, "no weights"),
    ],
    ids=["missing", "file", "no-config", "no-weights"],
)
def test_bad_folders(folder, make, match):
    with pytest.raises(push.PushError, match=match):
        _main("me/x", str(make(folder)), "--dry_run")


@pytest.mark.parametrize("repo_id", ["a/b/c", "has space", "org/two--dashes"])
def test_bad_repo_id(folder, repo_id):
    with pytest.raises(push.PushError, match="is not a Hub repository id"):
        _main(repo_id, str(folder), "--dry_run")


def test_not_logged_in(folder, online):
    with pytest.raises(push.PushError, match="Not logged in"):
        _main("me/x", str(folder))
    assert not (folder / "README.md").exists()  # nothing written before the login check


def test_offline_mode_is_reported(folder, online):
    online.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(push.PushError, match="Offline mode is on"):
        _main("me/x", str(folder), "--token", "hf_anything")


def test_rejected_token_and_foreign_namespace(folder, hub, online):
    online.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    with pytest.raises(push.PushError, match="rejected the token"):
        _main("me/x", str(folder), "--token", "hf_wrong")
    online.setenv("HF_TOKEN", hub.token)
    with pytest.raises(push.PushError, match="write access to the namespace 'someone-else'"):
        _main("someone-else/x", str(folder))
    assert hub.repos == {}


def test_folder_without_card_or_pruning_summary(folder, hub, online):
    online.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    config = json.loads((folder / "config.json").read_text())
    del config["oto_pruning_summary"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(push.PushError, match="no README.md and none could be written.*oto_pruning_summary"):
        _main("me/x", str(folder), "--token", hub.token)
    assert hub.repos == {}


def test_cli_exits_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        push.cli(["me/x", str(tmp_path / "missing")])
    assert exit_info.value.code == 1
    assert "push_to_hub: error: Folder" in capsys.readouterr().err
