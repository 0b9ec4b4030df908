"""`distill init-student`: a student from a subset of the teacher's layers."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from distill.cli import main


def test_keeps_the_named_layers_and_everything_outside_them(tmp_path, tiny_tokenizer_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.tiny import make_model_dir

    teacher = make_model_dir(tmp_path / "teacher", tokenizer_dir=tiny_tokenizer_dir, num_layers=4, seed=3)
    out = tmp_path / "student"
    result = CliRunner().invoke(main, ["init-student", "--teacher", str(teacher), "--out", str(out), "--layers", "0,-1"])
    assert result.exit_code == 0, result.output
    t, s = load_file(str(teacher / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for key, value in s.items():
        source = key.replace("layers.1.", "layers.3.")
        torch.testing.assert_close(value, t[source], rtol=0, atol=0, msg=key)
    assert not any("layers.2." in k or "layers.3." in k for k in s)
    record = json.loads((out / "distill-init-student.json").read_text())
    assert record["kept_layers"] == [0, 3] and record["teacher_layers"] == 4
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 2 and (out / "tokenizer.json").is_file()


def test_keeping_every_layer_is_the_teacher(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM

    from tests.tiny import make_model_dir

    teacher = make_model_dir(tmp_path / "teacher", tokenizer_dir=tiny_tokenizer_dir, num_layers=3, seed=4)
    out = tmp_path / "student"
    assert CliRunner().invoke(main, ["init-student", "--teacher", str(teacher), "--out", str(out),
                                     "--layers", "0", "--layers", "1", "--layers", "2"]).exit_code == 0
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    a = AutoModelForCausalLM.from_pretrained(teacher).eval()(ids).logits
    b = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layers,message", [("0,7", "--layers: 7 is outside the teacher's 2 layers"),
                                            ("1,1", "names a layer twice"), ("x", "'x' is not a layer index")])
def test_bad_layers_are_one_line(layers, message, tmp_path, tiny_teacher_dir):
    result = CliRunner().invoke(main, ["init-student", "--teacher", str(tiny_teacher_dir), "--out",
                                       str(tmp_path / "s"), "--layers", layers])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "s").exists()
