import subprocess
import sys

from distill.fingerprint import tokenizer_fingerprint
from distill.prompts import encode_prompt


def test_import_and_help_are_light():
    """`distill --help` (and building every command's options) imports no heavy package. Checked by
    the modules loaded, not by a wall-clock threshold, which a busy machine would break."""
    code = (
        "import sys; import distill.cli; "
        "from click.testing import CliRunner; "
        "r=[CliRunner().invoke(distill.cli.main, [*c, '--help']) for c in ([], ['generate'], ['augment'], ['train'], ['eval'])]; "
        "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; "
        "print(','.join(m for m in ('torch','vllm','deepspeed','transformers','pyarrow','accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported by --help: {out.stdout}"


def test_tiny_fixtures(tiny_teacher_dir, tiny_student_dir):
    from transformers import AutoTokenizer

    teacher_tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    student_tok = AutoTokenizer.from_pretrained(tiny_student_dir)
    assert tokenizer_fingerprint(teacher_tok) == tokenizer_fingerprint(student_tok)
    ids = encode_prompt(teacher_tok, [{"role": "user", "content": "What is 2 + 2?"}])
    assert ids[0] == teacher_tok.convert_tokens_to_ids("<|im_start|>")
    assert teacher_tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_fingerprint_ignores_tokenizer_class_defaults(tmp_path):
    """The same tokenizer files loaded as Qwen2Tokenizer (beside a config.json) or generically
    have one fingerprint; a changed chat template or vocab does not."""
    import shutil

    from transformers import AutoTokenizer

    from tests.tiny import make_model_dir

    model_dir = make_model_dir(tmp_path / "model")
    tok_only = tmp_path / "tok"
    tok_only.mkdir()
    for path in model_dir.iterdir():
        if path.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(path, tok_only / path.name)
    with_config = AutoTokenizer.from_pretrained(model_dir)
    plain = AutoTokenizer.from_pretrained(tok_only)
    assert tokenizer_fingerprint(with_config) == tokenizer_fingerprint(plain)
    plain.chat_template = plain.chat_template + " "
    assert tokenizer_fingerprint(with_config) != tokenizer_fingerprint(plain)
