"""Config layers: precedence, coercion, unknown keys and where every error says the value came from."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from distill.config import ConfigError, Layer, load_config, read_yaml_layer
from distill.generate import GenerateConfig
from distill.train.config import TrainConfig, load_train_config


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture()
def student_recipe(tmp_path):
    """A config student recipe with training defaults, next to a tokenizer it names."""
    return write(tmp_path / "student.yaml", """
        description: tiny
        config: {model_type: qwen2, hidden_size: 32}
        tokenizer: ./tok
        lora:
          rank: 4
        train:
          lr: 3.0e-3
          weight_decay: 0.1
          min_lr_ratio: 0.1
        """)


def test_precedence_defaults_recipe_file_flags(student_recipe, tmp_path):
    config_file = write(tmp_path / "run.yaml", """
        corpus: [c1, c2]
        out: o
        lr: 1.0e-3
        weight_decay: 0.2
        """)
    config = load_train_config(str(config_file), {"student": str(student_recipe), "lr": 5e-4})
    assert config.lr == 5e-4  # flag > file > recipe
    assert config.weight_decay == 0.2  # file > recipe
    assert config.min_lr_ratio == 0.1 and config.lora_rank == 4  # recipe > defaults
    assert config.kd_weight == 0.5  # the default
    assert config.corpus == ("c1", "c2")
    assert config.tokenizer is None


def test_coercion(tmp_path):
    # ints where floats are declared, a single string where a list is, lists to tuples
    config = load_config(TrainConfig, None, {"student": "s", "corpus": "c", "out": "o", "lr": 1, "kd_weight": 0})
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.corpus == ("c",)
    gen = load_config(GenerateConfig, None, {"teacher": "t", "prompts": ["a.jsonl"], "out": "o", "stop": ["x", "y"]})
    assert gen.prompts == "a.jsonl" and gen.stop == ("x", "y")
    gen = load_config(GenerateConfig, None, {"teacher": "t", "prompts": ("a.jsonl", "b.jsonl"), "out": "o"})
    assert gen.prompts == ("a.jsonl", "b.jsonl")
    # dashes accepted in keys; None values skipped (an unset flag keeps the file's value)
    layer = Layer("f.yaml", {"max-new-tokens": 7, "top_k": None})
    gen = load_config(GenerateConfig, layers=[layer, Layer("command line", {"teacher": "t", "prompts": "p", "out": "o"})])
    assert gen.max_new_tokens == 7 and gen.top_k == 20


def test_bad_value_in_config_file_names_file_line_and_key(tmp_path, student_recipe):
    config_file = write(tmp_path / "run.yaml", """
        student: s
        corpus: [c]
        out: o
        lr: fast
        """)
    with pytest.raises(ConfigError, match=r"run\.yaml:4: lr: must be a number, got 'fast'"):
        load_train_config(str(config_file), {})
    # a range check (in __post_init__) is reported where the value was set too
    write(config_file, f"student: {student_recipe}\ncorpus: [c]\nout: o\n\nkd_weight: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:5: kd_weight: must be in \[0, 1\], got 2"):
        load_train_config(str(config_file), {})
    with pytest.raises(ConfigError, match=r"^--kd-weight: must be in \[0, 1\], got 3"):
        load_train_config(str(config_file), {"kd_weight": 3.0})
    # a Literal choice
    write(config_file, "student: s\ncorpus: [c]\nout: o\ndivergence: kl\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:4: divergence: must be one of forward_kl, .*got 'kl'"):
        load_train_config(str(config_file), {})


def test_unknown_keys_name_file_line_and_suggest(tmp_path, student_recipe):
    config_file = write(tmp_path / "run.yaml", "student: s\ncorpus: [c]\nout: o\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:4: learning_rate: unknown key for TrainConfig"):
        load_train_config(str(config_file), {})
    write(config_file, "student: s\nkd_wieght: 0.3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: kd_wieght: .*did you mean 'kd_weight'\?"):
        load_train_config(str(config_file), {})
    # in the student recipe's train: block, and at its top level
    text = student_recipe.read_text().replace("  lr: 3.0e-3", "  lrr: 3.0e-3")
    write(student_recipe, text)
    with pytest.raises(ConfigError, match=r"student\.yaml:7: train\.lrr: unknown key for TrainConfig; did you mean 'lr'"):
        load_train_config(None, {"student": str(student_recipe), "corpus": ("c",), "out": "o"})
    write(student_recipe, "config: {model_type: qwen2}\ntokenizer: t\ntrian: {}\n")
    with pytest.raises(ConfigError, match=r"student\.yaml:3: trian: unknown key for StudentRecipe; did you mean 'train'"):
        load_train_config(None, {"student": str(student_recipe), "corpus": ("c",), "out": "o"})


def test_bad_value_in_student_recipe_names_the_recipe(tmp_path, student_recipe):
    write(student_recipe, student_recipe.read_text().replace("lr: 3.0e-3", "lr: -1"))
    with pytest.raises(ConfigError, match=r"student\.yaml:7: train\.lr: must be > 0, got -1\.0"):
        load_train_config(None, {"student": str(student_recipe), "corpus": ("c",), "out": "o"})
    write(student_recipe, student_recipe.read_text().replace("rank: 4", "rank: four"))
    with pytest.raises(ConfigError, match=r"student\.yaml:5: lora\.rank: must be int"):
        load_train_config(None, {"student": str(student_recipe), "corpus": ("c",), "out": "o"})
    write(student_recipe, "model: m\nconfig: {model_type: qwen2}\n")
    with pytest.raises(ConfigError, match=r"student\.yaml:1: model: give exactly one of 'model'"):
        load_train_config(None, {"student": str(student_recipe), "corpus": ("c",), "out": "o"})


def test_cli_reports_config_file_errors_with_exit_2(tmp_path):
    from distill.cli import main

    config_file = write(tmp_path / "run.yaml", "teacher: t\nprompts: p\nout: o\ntop_k: lots\n")
    result = CliRunner().invoke(main, ["generate", "--config", str(config_file)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {config_file}:4: top_k: must be int, got str 'lots'"
    write(config_file, "teacher: t\nprompts: p\nout: o\ntop_k: 5\n")
    result = CliRunner().invoke(main, ["generate", "--config", str(config_file), "--top-k", "0"])
    assert result.exit_code == 2 and result.output.startswith("error: --top-k: must be >= 1"), result.output


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", "a: 1\nb: [unclosed\nc: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        read_yaml_layer(bad)
    with pytest.raises(ConfigError, match=r"not found"):
        read_yaml_layer(tmp_path / "missing.yaml")
    write(bad, "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"expected a mapping"):
        read_yaml_layer(bad)


def test_teacher_recipe_is_typed(tmp_path, tiny_teacher_dir):
    """A misspelt top-level key in a teacher recipe is an error naming the recipe file and line (it
    used to be ignored); relative model paths resolve against the recipe's folder."""
    from distill.teachers import load_teacher, teacher_recipe

    recipe = write(tmp_path / "mine.yaml", f"model: {tiny_teacher_dir}\nbackend: hf\nbatch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml:3: batch_sise: unknown key for TeacherRecipe; did you mean 'batch_size'"):
        teacher_recipe(str(recipe))
    write(recipe, "model: ./model\nbackend: tgi\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml:2: backend: must be one of hf, vllm, openai, got 'tgi'"):
        teacher_recipe(str(recipe))
    write(recipe, "backend: hf\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: model: the teacher recipe names no model"):
        teacher_recipe(str(recipe))
    (tmp_path / "model").symlink_to(tiny_teacher_dir)
    write(recipe, "model: ./model\nhf:\n  batch_size: 2\n  kv_cahce: static\n")
    assert teacher_recipe(str(recipe)).model == str((tmp_path / "model").resolve())
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown hf option\(s\) \['kv_cahce'\]"):
        load_teacher(str(recipe))
    from distill.cli import main

    seeds = write(tmp_path / "seeds.jsonl", '{"prompt": "hello there"}\n')
    result = CliRunner().invoke(main, ["generate", "--teacher", str(write(recipe, "model: m\nbakend: hf\n")),
                                       "--prompts", str(seeds), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "mine.yaml:2: bakend: unknown key for TeacherRecipe" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_every_shipped_recipe_loads():
    from distill.recipes import recipe_names
    from distill.teachers import teacher_recipe
    from distill.train.student import resolve_student

    for name in recipe_names("teachers"):
        assert teacher_recipe(name).model
    for name in recipe_names("students"):
        source, layer = resolve_student(name)
        assert source.tokenizer and layer is not None
        load_train_config(None, {"student": name, "corpus": ("c",), "out": "o"})
