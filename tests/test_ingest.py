"""Seed ingestion: every format, every bad record named by file:line, skip counts, dedup."""

import json

import pytest

from distill.ingest import InputError, ingest, read_prompts


def write_jsonl(path, lines):
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return path


def test_jsonl_prompt_messages_system_reference_and_dedup(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        json.dumps({"prompt": "What is 2 + 2?", "id": 7, "reference": "4", "topic": "math"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]}),
        json.dumps({"prompt": "Hello", "system": "You are terse."}),
        json.dumps({"prompt": "what is  2 + 2?"}),  # same after normalization -> duplicate
    ])
    result = ingest(path)
    assert [r.prompt for r in result.records] == ["What is 2 + 2?", "Why?", "Hello"]
    assert result.duplicates == 1 and result.num_read == 4 and result.skipped == {}
    first = result.records[0]
    assert first.reference == "4" and first.origin["seed_id"] == "7" and first.origin["where"] == f"{path}:1"
    assert first.origin["fields"] == {"topic": "math"}
    assert result.records[2].messages[0] == {"role": "system", "content": "You are terse."}


def test_csv_parquet_and_datasets_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "s.csv").write_text('prompt,reference\n"multi\nline prompt",ref\nsecond,\n')
    records = read_prompts(tmp_path / "s.csv")
    assert [r.prompt for r in records] == ["multi\nline prompt", "second"] and records[1].reference is None
    assert records[1].origin["where"].endswith("s.csv:4")  # the quoted newline counts as a line
    pq.write_table(pa.table({"prompt": ["a b", "c d"], "id": ["x", "y"]}), tmp_path / "s.parquet")
    assert [r.prompt for r in read_prompts(tmp_path / "s.parquet")] == ["a b", "c d"]
    datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "from disk"}]]}).save_to_disk(str(tmp_path / "ds"))
    assert read_prompts(tmp_path / "ds")[0].prompt == "from disk"


BAD = [
    ('{"prompt": "ok"', "malformed_json", "malformed JSON"),
    ('{"text": "no prompt"}', "missing_prompt", "no 'prompt' or 'messages'"),
    ('{"prompt": "   "}', "empty_prompt", "'prompt' is empty"),
    ('{"prompt": 42}', "wrong_type", "'prompt' must be a string, got int"),
    ('{"prompt": "x", "reference": 3}', "wrong_type", "'reference' must be a string"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "bad_messages", "last message must be a user turn"),
    ('["a list"]', "not_an_object", "expected an object"),
    (b'{"prompt": "caf\xe9"}', "not_utf8", "not valid UTF-8"),
]


@pytest.mark.parametrize("line,reason,message", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_each_bad_record_names_file_and_line(tmp_path, line, reason, message):
    path = write_jsonl(tmp_path / "seeds.jsonl", ['{"prompt": "fine"}', "", line])
    with pytest.raises(InputError) as err:
        ingest(path)
    assert f"{path}:3: " in str(err.value) and message in str(err.value) and "--skip-invalid" in str(err.value)
    result = ingest(path, skip_invalid=True)
    assert result.skipped == {reason: 1} and [r.prompt for r in result.records] == ["fine"]


def test_skip_invalid_counts_per_reason_and_other_errors(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        '{"prompt": "a"}', '{"prompt": 1}', '{"prompt": 2}', "{bad", '{"prompt": ""}', '{"prompt": "b", "id": "1"}',
        '{"prompt": "c", "id": "1"}',
    ])
    result = ingest(path, skip_invalid=True)
    assert result.skipped == {"wrong_type": 2, "malformed_json": 1, "empty_prompt": 1, "duplicate_id": 1}
    assert result.stats()["prompts"] == 2
    with pytest.raises(InputError, match="5 invalid seed record"):
        ingest(path)
    with pytest.raises(InputError, match="no such file"):
        ingest(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="unsupported seed file type"):
        ingest(write_jsonl(tmp_path / "s.txt", ["x"]))
    with pytest.raises(InputError, match="no valid prompts"):
        ingest(write_jsonl(tmp_path / "only_bad.jsonl", ['{"prompt": 1}']), skip_invalid=True)
    (tmp_path / "bad.csv").write_bytes(b"prompt\nok\n\xff\xfe\n")
    with pytest.raises(InputError, match=r"bad.csv:3: not valid UTF-8"):
        ingest(tmp_path / "bad.csv")
    assert ingest(tmp_path / "bad.csv", skip_invalid=True).skipped == {"not_utf8": 1}


def test_augmented_prompts_keep_their_lineage(tmp_path):
    """A prompts.jsonl from `distill augment` re-read as seeds keeps source/parents/round."""
    lineage = {"source": "synthetic", "round": 2, "parents": ["seed-3", "seed-9"]}
    path = write_jsonl(tmp_path / "prompts.jsonl", [json.dumps({"prompt": "How many?", "origin": lineage})])
    record = ingest(path).records[0]
    assert record.origin["source"] == "synthetic" and record.origin["round"] == 2
    assert record.origin["parents"] == ["seed-3", "seed-9"] and record.origin["where"] == f"{path}:1"
    assert "fields" not in record.origin
