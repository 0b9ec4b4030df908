"""`distill logs`: the three readers on records shaped as the formats' documentation shows them,
every filter, conversations, the grouped split, the scrubber, and the bad-input paths."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.logs.readers import read_bedrock, read_litellm, read_openai

# -- records as the formats write them -------------------------------------------------------


def openai_record(rid, messages, *, model="gpt-4o-2024-08-06", response="ok", ts="2026-11-02T10:00:00Z", metadata=None,
                  error=None, status=200, stream=False):
    body = {"model": model, "messages": messages, "temperature": 0.2, "max_tokens": 512, "stream": stream}
    if error:
        resp = {"error": {"message": error, "type": "server_error"}}
    elif stream:
        words = response.split(" ")
        resp = [{"id": rid, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        resp += [{"id": rid, "object": "chat.completion.chunk",
                  "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w}}]} for i, w in enumerate(words)]
        resp += [{"id": rid, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    else:
        resp = {"id": rid, "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": response}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}
    return {"request_id": rid, "timestamp": ts, "request": body, "response": resp, "status_code": status,
            "metadata": metadata or {}}


def litellm_record(rid, messages, *, response="ok", start=1793700000.0, status="success", metadata=None, trace=None):
    return {"id": rid, "trace_id": trace or rid, "call_type": "acompletion", "stream": False, "status": status,
            "response_cost": 0.0001, "startTime": start, "endTime": start + 1.2, "completionStartTime": start + 0.3,
            "model": "claude-3-5-sonnet", "model_id": "abc", "model_group": "claude", "api_base": "https://api.example.com",
            "metadata": {"user_api_key_alias": "svc-search", "requester_metadata": metadata or {}},
            "request_tags": ["prod"], "end_user": None, "messages": messages,
            "response": None if status != "success" else {
                "id": rid, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": response}, "finish_reason": "stop"}]},
            "error_str": "RateLimitError: too many requests" if status != "success" else None,
            "model_parameters": {"temperature": 0.1}, "hidden_params": {}}


def bedrock_record(rid, body, *, operation="Converse", output=None, model="anthropic.claude-3-haiku-20240307-v1:0",
                   ts="2026-11-03T08:00:00Z", metadata=None, error=None):
    record = {"schemaType": "ModelInvocationLog", "schemaVersion": "1.0", "timestamp": ts, "accountId": "123456789012",
              "identity": {"arn": "arn:aws:sts::123456789012:assumed-role/app/session"}, "region": "us-east-1",
              "requestId": rid, "operation": operation, "modelId": model,
              "input": {"inputContentType": "application/json", "inputBodyJson": body, "inputTokenCount": 30},
              "output": {"outputContentType": "application/json", "outputBodyJson": output, "outputTokenCount": 12}}
    if metadata is not None:
        record["requestMetadata"] = metadata
    if error:
        record["errorCode"] = error
    return record


def write_jsonl(path: Path, records, gz=False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def logs(args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["logs", "--no-progress", *map(str, args)])
    return result.exit_code, result.output


def read_out(out: Path, name="prompts.jsonl") -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines()]


# -- readers ----------------------------------------------------------------------------------


def test_openai_reader_multi_turn_tools_images_and_streams():
    messages = [
        {"role": "system", "content": "You are a travel agent."},
        {"role": "user", "content": [{"type": "text", "text": "What is in this photo?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                               "function": {"name": "vision", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a beach"},
        {"role": "assistant", "content": "It shows a beach."},
        {"role": "user", "content": "Plan a weekend there."},
    ]
    entry = read_openai(openai_record("r1", messages, response="Day one: swim.", stream=True))
    assert [t["role"] for t in entry.turns] == ["system", "user", "assistant", "user"]
    assert entry.turns[1]["content"] == "What is in this photo?"
    assert entry.response == "Day one: swim."  # the streamed chunks, joined
    assert entry.dropped == {"image": 1, "tool_call": 1, "tool_result": 1}
    failed = read_openai(openai_record("r2", messages[:2], error="upstream timeout", status=504))
    assert not failed.ok and failed.error == "upstream timeout" and failed.response is None


def test_litellm_reader_payload():
    entry = read_litellm(litellm_record("l1", [{"role": "user", "content": "Summarize the memo."}],
                                        metadata={"team": "legal"}, trace="trace-9"))
    assert entry.ok and entry.turns == [{"role": "user", "content": "Summarize the memo."}] and entry.response == "ok"
    assert entry.metadata["team"] == "legal" and entry.metadata["tags"] == ["prod"] and entry.conversation == "trace-9"
    assert entry.timestamp.year == 2026
    failed = read_litellm(litellm_record("l2", [{"role": "user", "content": "x"}], status="failure"))
    assert not failed.ok and "RateLimitError" in failed.error


def test_bedrock_reader_converse_invoke_stream_batch_and_errors():
    converse = {"system": [{"text": "Answer briefly."}],
                "messages": [{"role": "user", "content": [{"text": "Describe"}, {"image": {"format": "png", "source": {"bytes": "..."}}}]},
                             {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "look", "input": {}}}]},
                             {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "cat"}]}}]},
                             {"role": "assistant", "content": [{"text": "A cat."}]},
                             {"role": "user", "content": [{"text": "Its color?"}]}],
                "inferenceConfig": {"maxTokens": 100}}
    output = {"output": {"message": {"role": "assistant", "content": [{"text": "Orange."}]}}, "stopReason": "end_turn"}
    entry = read_bedrock(bedrock_record("b1", converse, output=output, metadata={"app": "pets"}))
    assert entry.turns == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Describe"},
                           {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Its color?"}]
    assert entry.response == "Orange." and entry.dropped == {"image": 1, "tool_call": 1, "tool_result": 1}
    assert entry.metadata == {"app": "pets"}
    anthropic = {"anthropic_version": "bedrock-2023-05-31", "system": "Be terse.",
                 "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 50}
    stream = [{"type": "message_start"}, {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hel"}},
              {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "lo"}}, {"type": "message_stop"}]
    entry = read_bedrock(bedrock_record("b2", anthropic, operation="InvokeModelWithResponseStream", output=stream))
    assert entry.turns[0] == {"role": "system", "content": "Be terse."} and entry.response == "Hello"
    titan = read_bedrock(bedrock_record("b3", {"inputText": "Write a haiku", "textGenerationConfig": {}},
                                        operation="InvokeModel", output={"results": [{"outputText": "Leaves"}]}))
    assert titan.turns == [{"role": "user", "content": "Write a haiku"}] and titan.response == "Leaves"
    failed = read_bedrock(bedrock_record("b4", anthropic, error="ThrottlingException"))
    assert not failed.ok and failed.error == "ThrottlingException"
    batch = read_bedrock({"recordId": "rec-1", "modelInput": anthropic,
                          "modelOutput": {"content": [{"type": "text", "text": "Yo"}]}})
    assert batch.request_id == "rec-1" and batch.response == "Yo"


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def mixed_logs(tmp_path):
    folder = tmp_path / "logs"
    write_jsonl(folder / "gateway" / "2026-11-02.jsonl.gz", [
        openai_record(f"o{i}", [{"role": "user", "content": f"How do I reset router model {i}?"}],
                      metadata={"team": "support", "env": "prod"}) for i in range(6)
    ] + [openai_record("oerr", [{"role": "user", "content": "Fails"}], error="boom", status=500)], gz=True)
    write_jsonl(folder / "litellm" / "part-0.jsonl", [
        litellm_record(f"l{i}", [{"role": "user", "content": f"Summarize contract clause {i} for the board."}],
                       metadata={"team": "legal"}) for i in range(4)])
    write_jsonl(folder / "bedrock" / "x.json", [
        bedrock_record(f"b{i}", {"messages": [{"role": "user", "content": [{"text": f"Translate sentence {i} to French."}]}]},
                       output={"output": {"message": {"role": "assistant", "content": [{"text": "Bonjour"}]}}},
                       metadata={"team": "i18n"}) for i in range(3)])
    return folder


def test_all_formats_from_a_folder_with_gzip_into_a_seed_file(mixed_logs, tmp_path):
    from distill.ingest import read_prompts

    out = tmp_path / "out"
    code, output = logs(["--logs", mixed_logs, "--out", out])
    assert code == 0, output
    summary = json.loads((out / "logs.json").read_text())
    assert summary["formats"] == {"openai": 7, "litellm": 4, "bedrock": 3}
    assert summary["accepted"] == 13 and summary["rejected"] == {"error": 1}
    records = read_out(out)
    assert {r["log"]["format"] for r in records} == {"openai", "litellm", "bedrock"}
    first = next(r for r in records if r["log"]["request_id"] == "o0")
    assert first["log"]["file"].endswith("2026-11-02.jsonl.gz") and first["log"]["line"] == 1
    assert first["response"] == "ok" and first["log"]["metadata"] == {"team": "support", "env": "prod"}
    report = [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()]
    assert len(report) == 14 and sum(r["decision"] == "accepted" for r in report) == 13
    assert [r.messages for r in read_prompts(out / "prompts.jsonl")] == [tuple(r["messages"]) for r in records]  # as seeds
    assert "13 prompts" in output and "rejected: error 1" in output
    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0 and "14 records read (bedrock 3, openai 7, litellm 4); 13 prompts" in shown.output


def test_filters_time_model_metadata_turns_tokens(mixed_logs, tmp_path, tiny_tokenizer_dir):
    runs = []

    def accepted(*args):
        out = tmp_path / f"out{len(runs)}"
        runs.append(out)
        code, output = logs(["--logs", mixed_logs, "--out", out, *args])
        assert code == 0, output
        return json.loads((out / "logs.json").read_text())

    assert accepted("--since", "2026-11-02T12:00:00")["rejected"]["outside_window"] == 6 + 0  # openai logged at 10:00
    s = accepted("--until", "2026-11-03")
    assert s["rejected"]["outside_window"] == 7  # bedrock on the 3rd, litellm (startTime 1793700000) on the 4th
    assert accepted("--model", "claude-*")["accepted"] == 4
    assert accepted("--model", "gpt-4o*,anthropic.*")["accepted"] == 9
    assert accepted("--where", 'team in ["legal", "i18n"]')["accepted"] == 7
    assert accepted("--where", 'team == "support" and not env != "prod"')["accepted"] == 6
    assert accepted("--where", 'exists(env) or tags contains "prod"')["accepted"] == 10
    assert accepted("--keep-errors")["accepted"] == 14
    from transformers import AutoTokenizer

    from distill.prompts import encode_prompt

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    lengths = sorted(len(encode_prompt(tok, [{"role": "user", "content": r["messages"][-1]["content"]}]))
                     for r in read_out(runs[0]))
    limit = lengths[len(lengths) // 2]
    s = accepted("--max-prompt-tokens", limit, "--tokenizer", tiny_tokenizer_dir)
    assert s["rejected"]["too_long"] == sum(n > limit for n in lengths) > 0


def test_conversations_collapse_to_the_longest_request_and_the_split_keeps_them_whole(tmp_path):
    records = []
    for c in range(40):
        history = []
        for turn in range(3):  # the app logs every request of the chat: its whole history each time
            history = history + [{"role": "user", "content": f"Conversation {c} question {turn} about topic {c * 7}?"}]
            records.append(openai_record(f"c{c}t{turn}", list(history), metadata={"conversation_id": f"conv-{c}"}))
            history = history + [{"role": "assistant", "content": f"Answer {turn}."}]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    out = tmp_path / "out"
    code, output = logs(["--logs", path, "--out", out, "--split", "0.25", "--max-turns", "3"])
    assert code == 0, output
    summary = json.loads((out / "logs.json").read_text())
    assert summary["rejected"] == {"conversation_prefix": 80} and summary["accepted"] == 40
    train, validation = read_out(out), read_out(out, "validation.jsonl")
    assert all(len(r["messages"]) == 5 for r in train + validation)  # 3 user turns, 2 assistant turns as context
    groups = lambda rs: {r["log"]["group"] for r in rs}  # noqa: E731
    assert not groups(train) & groups(validation) and 4 <= len(validation) <= 18
    code, output = logs(["--logs", path, "--out", tmp_path / "short", "--max-turns", "2"])
    assert code == 0 and json.loads((tmp_path / "short" / "logs.json").read_text())["rejected"]["too_many_turns"] == 40


def test_exact_and_near_duplicates_and_decontamination(tmp_path):
    texts = ["Explain how a heat pump works in winter.", "explain how a  heat pump works in winter.",
             "Explain how a heat pump works in winter!", "Explain how a heat pump works in the winter months.",
             "Write a limerick about a cat."]
    path = write_jsonl(tmp_path / "d.jsonl", [openai_record(f"d{i}", [{"role": "user", "content": t}]) for i, t in enumerate(texts)])
    suite = write_jsonl(tmp_path / "suite.jsonl", [{"prompt": "Write a limerick about a cat.", "reference": "x"}])
    code, output = logs(["--logs", path, "--out", tmp_path / "o", "--decontaminate", suite, "--decontaminate-ngram", "5",
                         "--near-dup-threshold", "0.9"])
    assert code == 0, output
    rejected = json.loads((tmp_path / "o" / "logs.json").read_text())["rejected"]
    assert rejected == {"duplicate": 1, "near_duplicate": 1, "contaminated": 1}, rejected


PLANTED = {
    "email": "jane.doe@example.com", "phone": "+1 415-555-0132", "credit_card": "4111 1111 1111 1111",
    "ip_address": "10.20.30.40", "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "api_key": "sk-proj-abcdefghijklmnopqrstuvwxyz123456",
    "bearer_token": "abcd1234efgh5678ijkl", "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL",
}


def planted_logs(tmp_path) -> Path:
    prompt = (f"My email is {PLANTED['email']}, call {PLANTED['phone']}, card {PLANTED['credit_card']}, host "
              f"{PLANTED['ip_address']}. Keys: {PLANTED['aws_access_key']} AWS_SECRET_ACCESS_KEY={PLANTED['aws_secret_key']} "
              f"{PLANTED['api_key']} and Authorization: Bearer {PLANTED['bearer_token']} token {PLANTED['jwt']}. Why does my deploy fail?")
    records = [openai_record("s1", [{"role": "user", "content": prompt}], response=f"Write to {PLANTED['email']}.",
                             metadata={"user_email": PLANTED["email"], "client_ip": PLANTED["ip_address"]})]
    return write_jsonl(tmp_path / "secret.jsonl", records)


def test_scrubbing_removes_every_planted_secret_from_every_output_and_message(tmp_path):
    path = planted_logs(tmp_path)
    out = tmp_path / "out"
    code, output = logs(["--logs", path, "--out", out])
    assert code == 0, output
    written = "".join(p.read_text() for p in out.iterdir()) + output
    for kind, secret in PLANTED.items():
        assert secret not in written, kind
    scrubbed = json.loads((out / "logs.json").read_text())["scrubbed"]
    assert set(scrubbed) == set(PLANTED), scrubbed
    record = read_out(out)[0]
    assert "<EMAIL>" in record["messages"][0]["content"] and record["response"] == "Write to <EMAIL>."
    assert record["log"]["metadata"] == {"user_email": "<EMAIL>", "client_ip": "<IP_ADDRESS>"}
    # the control: without scrubbing the same run writes them
    code, output = logs(["--logs", path, "--out", tmp_path / "raw", "--no-scrub"])
    raw = "".join(p.read_text() for p in (tmp_path / "raw").iterdir())
    assert code == 0 and all(secret in raw for secret in PLANTED.values())


def test_bad_input_says_where_and_writes_nothing(tmp_path, mixed_logs):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(openai_record("a", [{"role": "user", "content": "hi"}])) + "\n{not json\n")
    code, output = logs(["--logs", broken, "--out", tmp_path / "o1"])
    assert code == 2 and f"error: {broken}:2: not valid JSON" in output and not (tmp_path / "o1").exists()
    code, output = logs(["--logs", broken, "--out", tmp_path / "o1", "--skip-invalid"])
    assert code == 0 and json.loads((tmp_path / "o1" / "logs.json").read_text())["rejected"] == {"unreadable": 1}
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "hello", "when": 1}])
    code, output = logs(["--logs", odd, "--out", tmp_path / "o2"])
    assert code == 2 and "not a record of any known log format (openai, litellm, bedrock)" in output
    code, output = logs(["--logs", mixed_logs, "--out", tmp_path / "o3", "--where", 'teem == "legal"'])
    assert code == 2 and "--where names 'teem', which no record's metadata has" in output
    assert not (tmp_path / "o3").exists()
    code, output = logs(["--logs", mixed_logs, "--out", tmp_path / "o4", "--model", "no-such-model"])
    assert code == 7, output
    assert "no prompt left of 14 records read (rejected: error 1, model 13); nothing written" in output
    assert not (tmp_path / "o4").exists() and not list(tmp_path.glob(".o4*"))
    code, output = logs(["--logs", tmp_path / "missing", "--out", tmp_path / "o5"])
    assert code == 2 and "no such file or folder" in output
    code, output = logs(["--logs", mixed_logs, "--out", tmp_path / "o6", "--where", "team < 3"])
    assert code == 2 and "comparisons are ==, !=, in, not in, contains" in output


def test_logged_responses_make_a_black_box_corpus_that_trains(tmp_path, tiny_teacher_dir, tiny_student_dir):
    """logs -> generate --responses logged -> train: the logged text is the response (teacher's
    tokenizer, no log-probs), the manifest says so, and training runs on CE alone."""
    from distill.corpus import open_corpus
    from tests.train.conftest import read_metrics

    records = [openai_record(f"r{i}", [{"role": "user", "content": f"What is {i} plus {i}?"}], response=f"{2 * i}")
               for i in range(12)]
    out = tmp_path / "prompts"
    code, output = logs(["--logs", write_jsonl(tmp_path / "l.jsonl", records), "--out", out])
    assert code == 0, output
    corpus_dir = tmp_path / "corpus"
    result = CliRunner().invoke(main, ["generate", "--teacher", str(tiny_teacher_dir), "--prompts", str(out / "prompts.jsonl"),
                                       "--out", str(corpus_dir), "--responses", "logged", "--no-progress"])
    assert result.exit_code == 0, result.output
    corpus = open_corpus(corpus_dir)
    assert corpus.black_box and corpus.num_rows == 12
    manifest = corpus.manifests[0]
    assert manifest["generation"]["responses"] == "logged" and manifest["teacher"]["responses"] == "logged"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    row = next(r for r in corpus.iter_rows() if r.prompt_text == "What is 3 plus 3?")
    assert row.response_ids.tolist() == tok("6", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    student = tmp_path / "student"
    result = CliRunner().invoke(main, ["train", "--student", str(tiny_student_dir), "--corpus", str(corpus_dir), "--out",
                                       str(student), "--max-steps", "3", "--tokens-per-batch", "128", "--max-seq-len", "64"])
    assert result.exit_code == 0, result.output
    assert "is black-box (no teacher log-probs, top_k=0): training with CE on the teacher's responses only" in result.output
    losses = [m for m in read_metrics(student) if "loss" in m]
    assert len(losses) == 3 and all(m["kd"] == 0 and m["loss"] == m["ce"] for m in losses)
    # a prompt file without logged responses says which record lacks one
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "hello"}) + "\n")
    result = CliRunner().invoke(main, ["generate", "--teacher", str(tiny_teacher_dir), "--prompts", str(bare), "--out",
                                       str(tmp_path / "c2"), "--responses", "logged", "--no-progress"])
    assert result.exit_code == 2 and f"{bare}:1: --responses logged needs a non-empty 'response'" in result.output


def test_worker_processes_give_the_same_output_as_one_process(tmp_path, mixed_logs):
    extra = [planted_logs(tmp_path)]
    outs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        code, output = logs(["--logs", mixed_logs, "--logs", extra[0], "--out", out, "--workers", workers, "--split", "0.3"])
        assert code == 0, output
        outs[workers] = out
    for name in ("prompts.jsonl", "validation.jsonl", "report.jsonl"):
        assert (outs["1"] / name).read_bytes() == (outs["2"] / name).read_bytes(), name
    one, two = (json.loads((outs[w] / "logs.json").read_text()) for w in ("1", "2"))
    for key in ("records_read", "formats", "accepted", "splits", "rejected", "scrubbed", "dropped_parts"):
        assert one[key] == two[key], key
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(openai_record("a", [{"role": "user", "content": "hi"}])) + "\n{not json\n")
    code, output = logs(["--logs", broken, "--out", tmp_path / "wb", "--workers", "2"])
    assert code == 2 and f"error: {broken}:2: not valid JSON" in output and not (tmp_path / "wb").exists()


def test_sigterm_stops_without_writing(tmp_path):
    from tests.test_preemption import error_lines, run_signalled

    records = [openai_record(f"t{i}", [{"role": "user", "content": f"Question number {i} about billing?"}]) for i in range(5000)]
    path = write_jsonl(tmp_path / "big.jsonl", records)
    out = tmp_path / "out"
    # SIGTERM as the second batch of records starts (batches of 2000)
    proc = run_signalled("distill.logs", "_Prepare.batch", 2, ["logs", "--logs", path, "--out", out, "--workers", "1",
                                                                "--no-progress"])
    assert proc.returncode == 75, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith("error: SIGTERM: nothing written; stopped")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_the_fast_screen_proposes_every_kind_a_pattern_would_scrub():
    """scrub's character screen (distill.logs.scrub.candidate_kinds) skips a pattern only when that
    pattern can find nothing: random text with secrets planted, against every pattern run alone."""
    import random
    import string

    from distill.logs import scrub as S

    rng = random.Random(1)
    alphabet = string.ascii_letters + string.digits + " @_-:.+()/="
    planted = ["-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----", "aws_secret_access_key = " + "A" * 40,
               "AWS SECRET KEY: " + "Bb" * 20, "AKIA" + "ABCDEFGHIJKLMNOP", "sk-" + "a" * 24, "ghp_" + "x" * 36,
               "github_pat_" + "y" * 22, "xoxb-" + "z" * 10, "AIza" + "Q" * 35, "sk_live_" + "w" * 16, "hf_" + "v" * 30,
               "Bearer abcdefghij", "eyJabcdefghi.eyJabcdefghi.abcdefghij", "a.b@example.com", "fe80::1",
               "4111 1111 1111 1111", "10.0.0.1", "+1 415 555 0100", "(415) 555-0100"]
    found = 0
    for _ in range(30000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.7:
            text += " " + rng.choice(planted) + " " + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        would = {kind for kind, pattern in S._PATTERNS
                 if any(S._accept(kind, m.group(0)) for m in pattern.finditer(text))}
        assert would <= S.candidate_kinds(text), (text, would - S.candidate_kinds(text))
        found += bool(would)
    assert found > 15000


def test_presidio_scrubber_replaces_its_entities(tmp_path):
    """--scrubber presidio runs Microsoft Presidio after the built-in patterns. Names and places need
    a spaCy model with NER (en_core_web_lg, not downloadable here); a blank spaCy pipeline still
    runs Presidio's pattern recognizers, which is what this checks: the wiring, the counts, the
    placeholders, and the errors for a missing model or an unknown entity."""
    import json

    import spacy

    model = tmp_path / "blank_en"
    spacy.blank("en").to_disk(model)
    iban = "DE89 3704 0044 0532 0130 00"
    log = write_jsonl(tmp_path / "logs.jsonl", [
        openai_record("r1", [{"role": "user", "content": f"Please pay the invoice to IBAN {iban} by Friday."}]),
        openai_record("r2", [{"role": "user", "content": "What is the capital of France?"}]),
    ])
    code, out = logs(["--logs", log, "--out", tmp_path / "p", "--scrubber", "presidio", "--presidio-model", model,
                      "--presidio-entities", "IBAN_CODE"])
    assert code == 0, out
    text = (tmp_path / "p" / "prompts.jsonl").read_text()
    assert iban not in text and "<IBAN_CODE>" in text
    assert json.loads((tmp_path / "p" / "logs.json").read_text())["scrubbed"].get("iban_code") == 1
    code, out = logs(["--logs", log, "--out", tmp_path / "control"])  # the built-in patterns alone miss it as an IBAN
    control = (tmp_path / "control" / "prompts.jsonl").read_text()
    assert code == 0 and "IBAN DE89 " in control and "<IBAN_CODE>" not in control

    code, out = logs(["--logs", log, "--out", tmp_path / "x", "--scrubber", "presidio", "--presidio-model", tmp_path / "nope"])
    assert code == 2 and "--presidio-model" in out and "spacy download" in out
    code, out = logs(["--logs", log, "--out", tmp_path / "y", "--scrubber", "presidio", "--presidio-model", model,
                      "--presidio-entities", "PERSONN"])
    assert code == 2 and "--presidio-entities: PERSONN unknown to Presidio" in out
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
