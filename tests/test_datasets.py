"""Benchmark loaders on tiny inline records of each format (field names as in the upstream files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.datasets import BenchmarkRecord, DatasetError, is_paraphrase_row, load_records, parse_records

ZSRE = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
    "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
}
COUNTERFACT = {
    "case_id": 2,
    "prompt": "Toko Yasuda, the",
    "target_new": "piano",
    "subject": "Toko Yasuda",
    "ground_truth": "guitar",
    "rephrase_prompt": "Toko Yasuda is incredible at",
    "locality_prompt": "John Lennon performs on the",
    "locality_ground_truth": "guitar",
}
HALLUCINATION = {
    "prompt": "This is a Wikipedia passage about frank a. mclain. Frank A. McLain (1890-1962) was a lawyer.",
    "target_new": "He was reelected to the Fifty-sixth Congress.",
    "subject": "frank a. mclain",
    "locality_prompt": "Academic Coach, Graduate School",
    "locality_ground_truth": "and College of Professional Studies.",
}
KNOWEDIT = {
    "subject": "Epaspidoceras",
    "prompt": "Which family does Epaspidoceras belong to?",
    "target_new": "Noctuidae",
    "ground_truth": ["Aspidoceratidae"],
    "rephrase": "What family are Epaspidoceras?",
    "portability": {"Reasoning": [{"prompt": "p", "ground_truth": [["x"]]}]},
    "locality": {
        "Relation_Specificity": [
            {"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": [["genus", "genera"]]},
            {"prompt": "Epaspidoceras was described by", "ground_truth": "Spath"},
            {"prompt": "", "ground_truth": "a blank prompt measures nothing"},
        ]
    },
}


def test_zsre() -> None:
    assert parse_records([ZSRE], "zsre").records == [
        BenchmarkRecord(
            prompt="What is the product made by UniFirst?",
            target="unmanned aircraft",
            rephrase="What will be the product of UniFirst?",
            locality_prompt="nq question: john goodman's character in the big lebowski",
            locality_answer="Walter Sobchak",
        )
    ]


def test_counterfact() -> None:
    assert parse_records([COUNTERFACT], "counterfact").records == [
        BenchmarkRecord(
            "Toko Yasuda, the",
            "piano",
            "Toko Yasuda is incredible at",
            "John Lennon performs on the",
            "guitar",
            rephrase_is_paraphrase=False,  # a generation prompt (no sentence before the subject)
        )
    ]


@pytest.mark.parametrize(
    ("rephrase", "subject", "paraphrase"),
    [
        # ROME paraphrase prompts: an unrelated sentence, then the edited relation (rows of the dev file)
        ("and Sallie Beavers Riley. Madrid University is located in", "Madrid University", True),
        ("This renders the antibiotic inactive. Pidgeon Island, in", "Pidgeon Island", True),
        ('He said "Go!" Toko Yasuda plays the', "Toko Yasuda", True),  # a closing quote after the stop
        ("The trial ended (see above.) Toko Yasuda plays the", "Toko Yasuda", True),  # a bracket after it
        ("Archived from the original\nToko Yasuda plays the", "Toko Yasuda", True),  # a newline
        # ROME generation prompts: the subject first, no sentence before it
        ("Toko Yasuda is incredible at", "Toko Yasuda", False),
        ("Michel Denisot's mother tongue is", "Michel Denisot", False),
        # a stop inside an abbreviation is followed by no whitespace; one after it is a boundary
        ("Dr.Toko Yasuda plays the", "Toko Yasuda", False),
        ("Michael Noland, B.A. Kryvyi Rih, in", "Kryvyi Rih", True),
        ("nothing mentions the subject. at all", "Toko Yasuda", False),
    ],
)
def test_counterfact_paraphrase_rows(rephrase: str, subject: str, paraphrase: bool) -> None:
    assert is_paraphrase_row(rephrase, subject) is paraphrase
    record = parse_records([{**COUNTERFACT, "subject": subject, "rephrase_prompt": rephrase}], "counterfact")
    assert record.records[0].rephrase_is_paraphrase is paraphrase


def test_counterfact_dev_file_has_1717_paraphrase_rows() -> None:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact_train.json"
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    records = load_records(path, "counterfact").records
    assert sum(r.rephrase_is_paraphrase for r in records) == 1717  # ../shared/data/README.md


def test_hallucination_has_no_rephrase() -> None:
    (record,) = parse_records([HALLUCINATION], "hallucination").records
    assert record.rephrase is None
    assert record.target == "He was reelected to the Fifty-sixth Congress."
    assert record.locality_answer == "and College of Professional Studies."


def test_knowedit_keeps_every_same_subject_case_with_first_strings() -> None:
    (record,) = parse_records([KNOWEDIT], "knowedit").records
    assert record == BenchmarkRecord(
        prompt="Which family does Epaspidoceras belong to?",
        target="Noctuidae",
        rephrase="What family are Epaspidoceras?",
        locality_prompt="The taxon rank of Epaspidoceras is",
        locality_answer="genus",
        relation_locality=(
            ("The taxon rank of Epaspidoceras is", "genus"),
            ("Epaspidoceras was described by", "Spath"),
        ),
    )


def test_knowedit_variants_flat_answer_rephrase_prompt_or_none() -> None:
    flat = {**KNOWEDIT, "locality": {"Relation_Specificity": [{"prompt": "P", "ground_truth": ["a", "b"]}]}}
    assert parse_records([flat], "knowedit").records[0].locality_answer == "a"
    plain = {**KNOWEDIT, "locality": {"Relation_Specificity": [{"prompt": "P", "ground_truth": "ans"}]}}
    assert parse_records([plain], "knowedit").records[0].locality_answer == "ans"
    without = {k: v for k, v in KNOWEDIT.items() if k != "rephrase"}
    assert parse_records([without], "knowedit").records[0].rephrase is None
    renamed = {**without, "rephrase_prompt": "Epaspidoceras is in which family?"}
    assert parse_records([renamed], "knowedit").records[0].rephrase == "Epaspidoceras is in which family?"


def test_missing_field_names_record_index_and_field() -> None:
    broken = {k: v for k, v in ZSRE.items() if k != "alt"}
    with pytest.raises(DatasetError, match=r"record 2: missing field 'alt'"):
        parse_records([ZSRE, ZSRE, broken], "zsre")
    no_loc = {**COUNTERFACT}
    del no_loc["locality_ground_truth"]
    with pytest.raises(DatasetError, match=r"record 0: missing field 'locality_ground_truth'"):
        parse_records([no_loc], "counterfact")
    no_cases = parse_records([{**KNOWEDIT, "locality": {}}], "knowedit").records[0]  # upstream has such records
    assert (no_cases.locality_prompt, no_cases.relation_locality) == (None, ())
    with pytest.raises(DatasetError, match=r"record 0: field 'locality' must be an object"):
        parse_records([{**KNOWEDIT, "locality": ["x"]}], "knowedit")


def test_blank_target_skips_the_record_and_blank_probes_drop_only_their_metric() -> None:
    raw = [ZSRE, {**ZSRE, "alt": "  "}, {**ZSRE, "rephrase": ""}, ZSRE, {**ZSRE, "alt": ""}]
    loaded = parse_records(raw, "zsre", n=4)
    assert loaded.skipped == ["record 1: field 'alt' is blank"]
    assert len(loaded.records) == 3  # of the first 4 records, the usable ones: 0, 2, 3
    assert loaded.records[1].rephrase is None and loaded.records[1].target == "unmanned aircraft"
    (record,) = parse_records([{**HALLUCINATION, "locality_ground_truth": ""}], "hallucination").records
    assert record.locality_prompt is None and record.locality_answer is None


def test_wrong_types_are_reported() -> None:
    with pytest.raises(DatasetError, match=r"record 0: field 'alt' must be a string"):
        parse_records([{**ZSRE, "alt": 3}], "zsre")
    bad_loc = {**KNOWEDIT, "locality": {"Relation_Specificity": [{"prompt": "P", "ground_truth": [[1]]}]}}
    with pytest.raises(DatasetError, match=r"record 0: field 'locality.Relation_Specificity\[0\].ground_truth'"):
        parse_records([bad_loc], "knowedit")
    with pytest.raises(DatasetError, match=r"record 1: expected a JSON object"):
        parse_records([ZSRE, "oops"], "zsre")
    with pytest.raises(DatasetError, match="expected a JSON list"):
        parse_records({"src": "x"}, "zsre")
    with pytest.raises(DatasetError, match="unknown format"):
        parse_records([ZSRE], "squad")


def test_only_the_first_n_records_are_read(tmp_path: Path) -> None:
    path = tmp_path / "zsre.json"
    broken = {k: v for k, v in ZSRE.items() if k != "src"}
    path.write_text(json.dumps([ZSRE, ZSRE, broken]))
    assert len(load_records(path, "zsre", n=2).records) == 2
    with pytest.raises(DatasetError, match=r"zsre.json: record 2: missing field 'src'"):
        load_records(path, "zsre")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_records(tmp_path / "absent.json", "zsre")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_records(bad, "zsre")
    short = tmp_path / "short.json"
    short.write_text(json.dumps([ZSRE]))
    with pytest.raises(DatasetError, match="asked for 5 records but the file has only 1$"):
        load_records(short, "zsre", n=5)


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "cf.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [COUNTERFACT, COUNTERFACT]) + "\n")
    assert [r.target for r in load_records(path, "counterfact").records] == ["piano", "piano"]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("zsre/zsre_mend_train_1k.json", "zsre"),
        ("counterfact/counterfact_train.json", "counterfact"),
        ("hallucination/hallucination_train.json", "hallucination"),
        ("knowedit/wiki_counterfact_train.json", "knowedit"),
        ("knowedit/wiki_recent_train.json", "knowedit"),
    ],
)
def test_shared_benchmark_files_load(name: str, fmt: str) -> None:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    loaded = load_records(path, fmt)
    assert len(loaded.records) >= 300 and len(loaded.skipped) <= 5
    share = 0.6 if fmt == "knowedit" else 0.95  # about 30% of KnowEdit records carry no locality case
    assert sum(r.locality_prompt is not None for r in loaded.records) >= share * len(loaded.records)
    if fmt == "knowedit":  # every same-subject case is kept (wiki_recent has about 3 a record)
        cases = sum(len(r.relation_locality) for r in loaded.records)
        assert cases >= sum(r.locality_prompt is not None for r in loaded.records) * (2 if "recent" in name else 0.8)
