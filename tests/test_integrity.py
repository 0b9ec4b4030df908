"""Nothing silently wrong: broken teachers, damaged and edited corpora, concurrent runs, crash
leftovers, config values as users write them, and one-line errors for every failure a user causes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.corpus import CorpusError, open_corpus
from distill.corpus.writer import file_sha256
from tests.train.conftest import read_metrics, train_args, write_corpus

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"Question {i}: what is {i} plus {i + 1}?" for i in range(12)]


def cli(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def assert_one_line_error(result, code, *fragments):
    """A CLI failure: the exit code of its class and exactly one line, `error: ...`, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.startswith(("error:", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def generate_args(teacher, seeds, out, *extra):
    return ["generate", "--teacher", teacher, "--prompts", seeds, "--out", out, "--max-new-tokens", "6", "--top-k", "4",
            "--rows-per-shard", "4", "--batch-size", "4", "--no-progress", *extra]


@pytest.fixture(scope="module")
def corpus(tiny_teacher_dir, seeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    result = cli(generate_args(tiny_teacher_dir, seeds, out))
    assert result.exit_code == 0, result.output
    return out


def shard_sha256s(folder):
    return {p.name: file_sha256(p) for p in sorted(Path(folder, "data").glob("*.parquet"))}


# ------------------------------------------------------------------ 1. non-finite teacher output

@pytest.fixture(scope="module")
def nan_teacher_dir(tiny_teacher_dir, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("nan_teacher") / "model"
    shutil.copytree(tiny_teacher_dir, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(out)
    return out


def test_non_finite_teacher_output_is_refused(nan_teacher_dir, seeds, tmp_path):
    out = tmp_path / "corpus"
    result = cli(generate_args(nan_teacher_dir, seeds, out))
    assert_one_line_error(result, 4, "NaN/inf log-probs", "Question 0", "--skip-invalid")
    assert not (out / "manifest.json").exists()
    result = cli(generate_args(nan_teacher_dir, seeds, tmp_path / "skipped", "--skip-invalid"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "skipped" / "manifest.json").read_text())
    assert manifest["rows"] == 0 and manifest["ingest"]["skipped"] == {"nonfinite_logprobs": len(PROMPTS)}


def test_encoder_never_maps_nan_to_a_code():
    from distill.corpus import encoding

    grid = encoding.Grid(512, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        encoding.encode_topk_logprobs(np.array([[-0.1, np.nan]]), grid)
    with pytest.raises(ValueError, match="NaN"):
        encoding.encode_logprobs(np.array([np.inf]), grid)
    # -inf is a valid floor
    assert encoding.encode_logprobs(np.array([-np.inf]), grid).tolist() == [encoding.floor_code(grid)]
    assert encoding.encode_logprobs(np.array([-np.inf]), encoding.Grid(512)).tolist() == [512_000]


def test_inspect_flags_rows_at_the_log_prob_floor(kd_rows, peaked_teacher_dir, tmp_path):
    import dataclasses

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(peaked_teacher_dir)
    rows = [dataclasses.replace(r, topk_logprobs=np.full_like(r.topk_logprobs, -np.inf)) if i < 3 else r
            for i, r in enumerate(kd_rows[:10])]
    folder = write_corpus(tmp_path / "floor", rows, tok, top_k=8)
    result = cli(["inspect", folder, "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["rows_at_logprob_floor"] == 3
    assert "3 row(s) have their top log-prob at the floor" in cli(["inspect", folder]).output


# ------------------------------------------------------------------ 2. resume verifies what it keeps

def test_resume_rewrites_a_kept_shard_damaged_on_disk(tiny_teacher_dir, seeds, corpus, tmp_path, monkeypatch):
    from distill.corpus.writer import CorpusWriter

    out = tmp_path / "corpus"

    def killed(self, extra=None):
        raise KeyboardInterrupt  # the run dies after its shards, before the manifest

    monkeypatch.setattr(CorpusWriter, "finish", killed)
    assert cli(generate_args(tiny_teacher_dir, seeds, out)).exit_code != 0
    monkeypatch.undo()
    shard = sorted((out / "data").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])  # footer intact
    shard.write_bytes(bytes(data))
    result = cli(generate_args(tiny_teacher_dir, seeds, out))
    assert result.exit_code == 0, result.output
    assert "damaged since it was written" in result.output
    open_corpus(out).verify()
    assert shard_sha256s(out) == shard_sha256s(corpus)  # the same bytes as an uninterrupted run
    assert not list((out / "data").glob(".*"))  # no records or temp files left in the finished corpus


# ------------------------------------------------------------------ 3 + fault injection: the reader trusts nothing

def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _flip_middle(folder):
    shard = sorted((folder / "data").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))


def _truncate(folder):
    shard = sorted((folder / "data").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])


CORRUPTIONS = {
    "byte_flip_mid_shard": _flip_middle,
    "truncated_shard": _truncate,
    "deleted_shard": lambda f: sorted((f / "data").glob("*.parquet"))[1].unlink(),
    "manifest_top_k": lambda f: _edit_manifest(f, lambda m: m.update(top_k=2)),
    "manifest_logprob_scale": lambda f: _edit_manifest(f, lambda m: m["encoding"].update(logprob_scale=256)),
    "manifest_identity": lambda f: _edit_manifest(f, lambda m: m.update(identity_sha256="0" * 64)),
    "manifest_rows": lambda f: _edit_manifest(f, lambda m: m["shards"][0].update(rows=m["shards"][0]["rows"] + 1)),
    "manifest_sha256": lambda f: _edit_manifest(f, lambda m: m["shards"][0].update(sha256="0" * 64)),
    "manifest_field_missing": lambda f: _edit_manifest(f, lambda m: m.pop("encoding")),
    "manifest_not_utf8": lambda f: (f / "manifest.json").write_bytes(b'{"format": "\xff"}'),
    "stray_parquet": lambda f: shutil.copy(sorted((f / "data").glob("*.parquet"))[0], f / "data" / "extra.parquet"),
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_inspect_and_train_refuse_every_corruption_before_any_step(damage, corpus, tiny_student_dir, tmp_path):
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    CORRUPTIONS[damage](broken)
    assert_one_line_error(cli(["inspect", broken]), 2)
    out = tmp_path / "student"
    assert_one_line_error(cli(train_args(tiny_student_dir, broken, out, max_steps=2)), 2)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_intact_corpus_passes_inspect_and_train(corpus, tiny_student_dir, tmp_path):
    assert cli(["inspect", corpus]).exit_code == 0
    result = cli(train_args(tiny_student_dir, corpus, tmp_path / "student", max_steps=2))
    assert result.exit_code == 0, result.output


def test_footer_mismatch_names_the_shard(corpus, tmp_path):
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    _edit_manifest(broken, lambda m: m.update(top_k=2))
    with pytest.raises(CorpusError, match=r"train-00000-of-\d+\.parquet: does not match .*top_k '4' in the shard, '2'"):
        open_corpus(broken)


# ------------------------------------------------------------------ 4. exclusive output folders

def test_a_held_folder_is_refused_at_once_naming_its_holder(tiny_teacher_dir, seeds, corpus, tiny_student_dir, tmp_path):
    from distill.lock import FolderLock

    out = tmp_path / "out"
    with FolderLock(out, purpose="another run"):
        line = assert_one_line_error(cli(train_args(tiny_student_dir, corpus, out, max_steps=2)), 6,
                                     f"pid {os.getpid()}", "another run")
        assert "since" in line
        assert_one_line_error(cli(generate_args(tiny_teacher_dir, seeds, out)), 6, f"pid {os.getpid()}")
    assert not out.exists()  # nothing written by the refused runs, the lock's folder gone with it


def test_a_dead_holders_lock_and_temp_files_are_taken_over(tiny_teacher_dir, seeds, corpus, tmp_path):
    out = tmp_path / "corpus"
    (out / "data").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (out / ".distill.lock").write_text(json.dumps({"pid": dead_pid, "host": "h", "started": "then"}))
    orphan = out / "data" / f".train-00000-of-00003.parquet.tmp-{dead_pid}-abcd"
    alive = out / "data" / f".train-00000-of-00003.parquet.tmp-{os.getpid()}-abcd"
    orphan.write_bytes(b"x")
    alive.write_bytes(b"x")
    result = cli(generate_args(tiny_teacher_dir, seeds, out))
    assert result.exit_code == 0, result.output
    assert not orphan.exists() and alive.exists()  # only the dead writer's temp file is removed
    alive.unlink()
    assert shard_sha256s(out) == shard_sha256s(corpus)


def _spawn(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "distill", *map(str, args)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _second_while_first_holds(first_args, second_args, lock):
    first = _spawn(first_args)
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert lock.exists(), "the first run never took its lock"
    started = time.time()
    second = _spawn(second_args)
    _, err = second.communicate(timeout=120)
    waited = time.time() - started
    out, first_err = first.communicate(timeout=300)
    return first.returncode, second.returncode, err, waited, first_err


@pytest.mark.slow
def test_two_concurrent_trains_into_one_out(kd_corpus, tiny_student_dir, tmp_path):
    args = train_args(tiny_student_dir, kd_corpus, tmp_path / "out", max_steps=30, save_every=10)
    rc1, rc2, err, waited, first_err = _second_while_first_holds(args, args, tmp_path / "out" / ".distill.lock")
    assert rc1 == 0, first_err[-2000:]
    assert rc2 == 6 and err.strip().splitlines()[-1].startswith("error: ") and "in use by pid" in err, err
    assert waited < 60
    ref = tmp_path / "ref"
    assert cli(train_args(tiny_student_dir, kd_corpus, ref, max_steps=30, save_every=10)).exit_code == 0
    got = [(m["step"], m["loss"]) for m in read_metrics(tmp_path / "out") if "loss" in m]
    assert got == [(m["step"], m["loss"]) for m in read_metrics(ref) if "loss" in m]


@pytest.mark.slow
def test_two_concurrent_generates_into_one_out(tiny_teacher_dir, seeds, corpus, tmp_path):
    args = generate_args(tiny_teacher_dir, seeds, tmp_path / "out")
    rc1, rc2, err, waited, first_err = _second_while_first_holds(args, args, tmp_path / "out" / ".distill.lock")
    assert rc1 == 0, first_err[-2000:]
    assert rc2 == 6 and "in use by pid" in err, err
    assert shard_sha256s(tmp_path / "out") == shard_sha256s(corpus)


# ------------------------------------------------------------------ 5. resume survives what crashes leave

def test_resume_after_a_torn_metrics_line(kd_corpus, tiny_student_dir, tmp_path):
    out = tmp_path / "run"
    args = dict(max_steps=6, save_every=3)
    assert cli(train_args(tiny_student_dir, kd_corpus, out, **args)).exit_code == 0
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "loss": 1.2')  # a write cut by a full disk or a power loss
    result = cli(train_args(tiny_student_dir, kd_corpus, out, resume=True, **args))
    assert result.exit_code == 0, result.output
    assert "torn or unreadable record" in result.output
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_another_plan(kd_corpus, tiny_student_dir, tmp_path, peaked_teacher_dir, kd_rows):
    from transformers import AutoTokenizer

    out = tmp_path / "run"
    args = dict(max_steps=6, save_every=3)
    assert cli(train_args(tiny_student_dir, kd_corpus, out, **args)).exit_code == 0
    line = assert_one_line_error(cli(train_args(tiny_student_dir, kd_corpus, out, resume=True, **{**args, "seed": 1})),
                                 2, "another plan", "seed 0 -> 1")
    assert "--resume-lr-change" not in line
    other = write_corpus(tmp_path / "other", kd_rows[:40], AutoTokenizer.from_pretrained(peaked_teacher_dir), top_k=8)
    assert_one_line_error(cli(train_args(tiny_student_dir, other, out, resume=True, **args)), 2, "corpus")
    lr = train_args(tiny_student_dir, kd_corpus, out, resume=True, **args)
    lr[lr.index("--lr") + 1] = "2e-3"
    assert_one_line_error(cli(lr), 2, "lr 0.001 -> 0.002", "--resume-lr-change")
    assert cli(lr + ["--resume-lr-change"]).exit_code == 0


def test_leftover_temp_files_of_a_killed_commit_are_cleaned(tiny_teacher_dir, seeds, corpus, tmp_path):
    out = tmp_path / "corpus"
    shutil.copytree(corpus, out)
    (out / "manifest.json").unlink()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    for name in ("manifest.json", "README.md"):
        (out / f".{name}.tmp-{dead}-beef").write_text("half")
    assert cli(generate_args(tiny_teacher_dir, seeds, out)).exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------ 6. fail before writing anything

def test_a_teacher_that_cannot_load_writes_nothing(tiny_teacher_dir, seeds, corpus, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)
    weights = teacher / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    out = tmp_path / "corpus"
    assert_one_line_error(cli(generate_args(teacher, seeds, out)), 4, "cannot load the model")
    assert not out.exists()
    weights.write_bytes(good)  # restored: the same command now runs
    result = cli(generate_args(teacher, seeds, out))
    assert result.exit_code == 0, result.output


def test_an_unwritable_out_is_one_line(tiny_teacher_dir, seeds, tmp_path, monkeypatch):
    import distill.lock

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(distill.lock.os, "open", refuse)
    assert_one_line_error(cli(generate_args(tiny_teacher_dir, seeds, tmp_path / "out")), 74, "permission denied")


def test_a_full_disk_is_one_line_and_the_run_stays_resumable(tiny_teacher_dir, seeds, corpus, tmp_path, monkeypatch):
    import distill.corpus.writer as writer

    out = tmp_path / "corpus"
    real = writer.atomic_write_with
    calls = {"n": 0}

    def fill_up(path, write):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(writer, "atomic_write_with", fill_up)
    assert_one_line_error(cli(generate_args(tiny_teacher_dir, seeds, out)), 74, "no space left", "rerun")
    monkeypatch.undo()
    result = cli(generate_args(tiny_teacher_dir, seeds, out))
    assert result.exit_code == 0 and "resuming; 1 shard(s) already written" in result.output, result.output
    assert shard_sha256s(out) == shard_sha256s(corpus)


# ------------------------------------------------------------------ 7. config values as a user writes them

def test_scalars_for_list_fields_and_yaml_1_1_numbers(tmp_path):
    from distill.config import ConfigError, load_config
    from distill.eval import EvalConfig
    from distill.generate import GenerateConfig
    from distill.train.config import TrainConfig

    config = tmp_path / "c.yaml"
    config.write_text('teacher: t\nprompts: p\nout: o\nstop: "Answer:"\n')
    assert load_config(GenerateConfig, config).stop == ("Answer:",)
    config.write_text("student: s\ncorpus: /path/c\nout: o\nlora_targets: q_proj\nlr: 3e-3\n")
    train = load_config(TrainConfig, config)
    assert train.corpus == ("/path/c",) and train.lora_targets == ("q_proj",) and train.lr == 3e-3
    config.write_text("models: teacher=demo\n")
    assert load_config(EvalConfig, config).models == ("teacher=demo",)
    config.write_bytes(b"student: s\nout: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not UTF-8 text"):
        load_config(TrainConfig, config)
    result = cli(["train", "--config", config])
    assert_one_line_error(result, 2, "not UTF-8")


# ------------------------------------------------------------------ 8. text JSON allows; one-line errors

def test_u2028_inside_a_string_and_a_bom(tmp_path):
    from distill.eval.scorers import load_suite
    from distill.ingest import ingest

    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"prompt": "a\u2028b", "reference": "1", "scorer": "exact"}, ensure_ascii=False) + "\n"
                     + json.dumps({"prompt": "c", "reference": "2", "scorer": "exact"}) + "\n", encoding="utf-8")
    assert [r.prompt for r in load_suite(str(suite)).rows] == ["a\u2028b", "c"]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "first one"}\n{"prompt": "second one"}\n')
    assert [r.prompt for r in ingest(str(seeds)).records] == ["first one", "second one"]
    suite.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "x", "reference": "1", "scorer": "exact"}).encode() + b"\n")
    assert [r.prompt for r in load_suite(str(suite)).rows] == ["x"]


def test_bad_gate_and_suite_are_one_line(tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"prompt": "x", "reference": "1", "scorer": "exact"}) + "\n")
    base = ["eval", "--model", "a=Qwen/none", "--suite", suite, "--out", tmp_path / "e"]
    assert_one_line_error(cli(base + ["--gate", "a.score >= " + "1 + " * 400 + "1"]), 2, "--gate")
    assert_one_line_error(cli(base + ["--gate", "a.score >>> 1"]), 2, "--gate")
    suite.write_bytes(b'{"prompt": "\xff", "reference": "1", "scorer": "exact"}\n')
    assert_one_line_error(cli(base), 2, "suite.jsonl:1", "UTF-8")


def test_debug_shows_the_traceback_too(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("student: s\nlr: fast\n")
    quiet = cli(["train", "--config", config])
    assert_one_line_error(quiet, 2, "c.yaml:2: lr: must be a number")
    loud = cli(["--debug", "train", "--config", config])
    assert loud.exit_code == 2 and "Traceback" in loud.output and "error: " in loud.output
    monkeypatch.setenv("DISTILL_DEBUG", "1")
    assert "Traceback" in cli(["train", "--config", config]).output


def test_a_file_system_without_flock_is_one_line_naming_the_lock(tmp_path, monkeypatch):
    """EOPNOTSUPP/ENOLCK from flock (a mount without locking): exit 74 naming the lock file."""
    import fcntl

    from distill.errors import describe_os_error
    from distill.lock import FolderLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError) as info:
        FolderLock(tmp_path / "out", purpose="test").acquire()
    message, code = describe_os_error(info.value)
    assert int(code) == 74 and message.startswith(str(tmp_path / "out" / ".distill.lock") + ": cannot lock the folder")
    assert "does not support flock" in message and "\n" not in message
