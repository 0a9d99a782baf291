"""Upload a folder written by `oto_hf.save_pruned` to the Hugging Face Hub, with a model card.

    hf auth login                                                      # once; or export HF_TOKEN=hf_...
    python scripts/push_to_hub.py your-name/bert-squad-pruned outputs/bert-squad-pruned --dry_run
    python scripts/push_to_hub.py your-name/bert-squad-pruned outputs/bert-squad-pruned --private \\
        --commit_message "OTO-pruned BERT, 50% of heads and neurons" --base_model google-bert/bert-base-uncased \\
        --dataset rajpurkar/squad --license apache-2.0

What it does: checks the folder with `oto_hf.read_pruned_folder` (it must hold config.json and weights), writes
`README.md` and `kept_per_layer.png` with `oto_hf.model_card.write_model_card` when the folder has no README.md
(figures from the `oto_pruning_summary` in config.json), checks the token with `whoami`, then
`HfApi.create_repo(repo_id, exist_ok=True, private=...)` and `HfApi.upload_folder(...)`: one commit with every file of
the folder. `--dry_run` prints the files, their sizes and the card's metadata and contacts nobody (no token needed; a
missing card is rendered in memory, not written).

The token is `--token`, else `HF_TOKEN`, else the one saved by `hf auth login` (`$HF_HOME/token`). `--token` ends up
in your shell history and the process list: prefer the other two. `HF_ENDPOINT` points the script at another
Hub-compatible server (the tests run it against a local fake Hub, `tests/utils/fake_hub.py`).

Behaviour that only the real Hub (huggingface.co) shows, and the tests do not cover:

- Storage. Weights and images are not stored in git. With `hf_xet` installed (a huggingface_hub dependency)
  `upload_folder` sends them to Xet storage through a pipelined, resumable upload that may split a very large folder
  into several commits ("... (part 2)"); with `HF_HUB_DISABLE_XET=1` or without `hf_xet` it uses the Git LFS batch API
  in one commit. Which files go to Xet/LFS is decided by the Hub (its .gitattributes rules and file size). The local
  fake Hub only speaks the regular and LFS protocols, not Xet's content-addressed storage.
- The Hub validates the card's YAML metadata (`/api/validate-yaml`) before anything is uploaded: a card with invalid
  metadata fails early with the Hub's message. Unknown `base_model` or dataset ids show as warnings on the model page.
- `--private` only applies when the repository is created: an existing repository keeps its visibility. Without it the
  repository is public unless your organization makes new repositories private by default. Private storage counts
  against your account's quota.
- Gated repositories: this script never gates a repository; turn on access requests in the repository settings (or
  `HfApi.update_repo_settings(repo_id, gated="auto")`). Pushing to a gated repository you can write to works as usual.
- Permissions: a fine-grained token needs write access to the target namespace; otherwise `create_repo` fails with
  403, reported here with the namespace.
- Rate limits: `whoami` is strictly rate-limited and repository creation and commits are limited per account; a 429
  answer is reported as is. huggingface_hub retries the upload requests with backoff, but not the final commit in the
  LFS path (retrying it could create a duplicate commit). Re-running the script after a failure is safe: files are
  uploaded again (or deduplicated by Xet) and committed once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, get_token, is_offline_mode
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from oto_hf import read_pruned_folder
from oto_hf.model_card import PLOT_NAME, build_model_card, write_model_card


class PushError(ValueError):
    """A problem with the folder, the login or the Hub's answer, with what to do about it."""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Upload a folder written by oto_hf.save_pruned to the Hugging Face Hub, with a model card.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("repo_id", help="Target repository, 'user/name' or 'org/name' ('name' uses your namespace).")
    parser.add_argument("folder", help="The folder written by save_pruned (config.json, model.safetensors, ...).")
    parser.add_argument("--private", action="store_true", help="Create the repository private (new repos only).")
    parser.add_argument("--commit_message", default="Upload OTO-pruned model (oto_hf)", help="Commit message.")
    parser.add_argument("--dry_run", action="store_true", help="List files, sizes and card metadata; upload nothing.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN, else the saved login).")
    card = parser.add_argument_group("model card (used only when the folder has no README.md)")
    card.add_argument("--base_model", default=None, help="Hub id of the starting model.")
    card.add_argument("--dataset", default=None, help="Hub id of the dataset.")
    card.add_argument("--task", default=None, help="Pipeline tag (default: from the model class).")
    card.add_argument("--license", default=None, help="License tag, e.g. apache-2.0.")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Check, card, log in, create and upload; returns what was (or, with `--dry_run`, would be) uploaded."""
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as error:
        raise PushError(
            f"`repo_id` {args.repo_id!r} is not a Hub repository id ('name' or 'namespace/name'): {error}"
        ) from error
    folder = check_folder(args.folder)
    card_kwargs = {"base_model": args.base_model, "dataset": args.dataset, "task": args.task, "license": args.license}
    has_card = (folder / "README.md").is_file()
    if args.dry_run:
        return dry_run(args.repo_id, folder, has_card, card_kwargs)

    if is_offline_mode():
        raise PushError("Offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): unset it to upload.")
    token = args.token or get_token()
    if not token:
        raise PushError(
            "Not logged in to the Hugging Face Hub: run `hf auth login`, set HF_TOKEN, or pass --token. Tokens: "
            "https://huggingface.co/settings/tokens (a write token is needed)."
        )
    api = HfApi(token=token)
    try:
        user = api.whoami()
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise PushError(f"{api.endpoint} rejected the token: log in again with `hf auth login`.") from error
        raise PushError(f"Could not check the token with {api.endpoint}/api/whoami-v2: {error}") from error
    print(f"Logged in to {api.endpoint} as {user.get('name', '?')}")

    if not has_card:
        write_card(folder, card_kwargs)
    files = list_files(folder)
    try:
        url = api.create_repo(args.repo_id, repo_type="model", private=True if args.private else None, exist_ok=True)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            namespace = args.repo_id.split("/")[0] if "/" in args.repo_id else user.get("name", "?")
            raise PushError(
                f"Cannot create or write {args.repo_id!r} (HTTP {status}): the token needs write access to the "
                f"namespace {namespace!r}. {error}"
            ) from error
        raise PushError(f"Creating {args.repo_id!r} failed: {error}") from error
    repo_id = url.repo_id or args.repo_id
    total = sum(size for _, size in files)
    print(f"Uploading {len(files)} files ({_size(total)}) to {url}")
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=args.commit_message
    )
    print(f"Done: {commit.commit_url}")
    return {"repo_id": repo_id, "url": str(url), "commit_url": commit.commit_url, "files": files, "dry_run": False}


def check_folder(path: str | Path) -> Path:
    """The folder, once `read_pruned_folder` found config.json and weights in it (a pruning record is needed only to
    write a card)."""
    try:
        return read_pruned_folder(path, require_record=False).path
    except ValueError as error:
        raise PushError(str(error)) from error


def list_files(folder: Path) -> list[tuple[str, int]]:
    """(path in repo, size) of what upload_folder sends: every file except .git/ and .cache/huggingface/."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or ".git" in relative.split("/") or relative.startswith(".cache/huggingface"):
            continue
        files.append((relative, path.stat().st_size))
    return files


def write_card(folder: Path, card_kwargs: dict[str, Any]) -> None:
    try:
        path = write_model_card(folder, **card_kwargs)
    except ValueError as error:
        raise PushError(f"The folder has no README.md and none could be written: {error}") from error
    print(f"Wrote the model card {path}")


def dry_run(repo_id: str, folder: Path, has_card: bool, card_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Print what would be uploaded and the card's metadata; writes nothing, sends nothing."""
    files = list_files(folder)
    generated: list[str] = []
    if has_card:
        card = ModelCard.load(folder / "README.md")
    else:
        try:
            import matplotlib  # noqa: F401

            plot = PLOT_NAME
        except ImportError:
            plot = None
        try:
            card = build_model_card(folder, plot_file=plot, **card_kwargs)
        except ValueError as error:
            raise PushError(f"The folder has no README.md and none could be written: {error}") from error
        generated = ["README.md"] + ([plot] if plot else [])
    print(f"Dry run: nothing is sent. Would upload to {repo_id}:")
    for name, size in files:
        print(f"  {name:<44} {_size(size):>10}")
    for name in generated:
        print(f"  {name:<44} {'(model card, written before the upload)'}")
    print(f"  {'total':<44} {_size(sum(size for _, size in files)):>10}")
    print("Model card metadata:")
    print(card.data.to_yaml())
    metadata = card.data.to_dict()
    return {"repo_id": repo_id, "files": files, "generated": generated, "metadata": metadata, "dry_run": True}


def _size(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1024
        if size < 1024 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def cli(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        main(args)
    except (ValueError, HfHubHTTPError) as error:
        parser.exit(1, f"push_to_hub: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
