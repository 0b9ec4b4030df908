"""Find shipped folders (teachers/, students/, data/, eval/) and resolve recipes by name or path.

In a source checkout the folders sit at the repository root; in an installed wheel they ship as
``distill/_shipped/<folder>``. A recipe is named on the CLI by name (``--teacher demo``,
``--teacher qwen2.5-72b-instruct``) or by path to a YAML file.
"""

from __future__ import annotations

from pathlib import Path


_PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_FOLDERS = ("teachers", "students", "data", "eval", "scripts")  # scripts: demo.sh only


def shipped_dir(folder: str) -> Path:
    """The shipped folder ``folder`` (one of SHIPPED_FOLDERS)."""
    assert folder in SHIPPED_FOLDERS, folder
    for candidate in (_PACKAGE_DIR / "_shipped" / folder, _PACKAGE_DIR.parent / folder):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"shipped folder '{folder}' not found next to {_PACKAGE_DIR}")


def recipe_names(folder: str) -> list[str]:
    """Names of the recipes shipped in ``folder`` (YAML files, or sub-folders holding recipe.yaml)."""
    base = shipped_dir(folder)
    names = [p.stem for p in base.glob("*.yaml")]
    names += [p.parent.name for p in base.glob("*/recipe.yaml")]
    return sorted(names)


def find_recipe(folder: str, spec: str) -> Path | None:
    """The recipe file ``spec`` names (a YAML path, a dir holding recipe.yaml, or a shipped name), or None."""
    path = Path(spec)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return path
    if path.is_dir() and (path / "recipe.yaml").is_file():
        return path / "recipe.yaml"
    base = shipped_dir(folder)
    for candidate in (base / f"{spec}.yaml", base / spec / "recipe.yaml"):
        if candidate.is_file():
            return candidate
    return None


def recipe_relative(recipe_path: str | Path, value: str) -> str:
    """A path a recipe names, resolved the one way every recipe key is: against the recipe's folder
    when it starts with ``./`` or ``../`` or exists there; an absolute path or anything else (a hub
    id) is returned as given."""
    candidate = Path(recipe_path).parent / value
    if value.startswith(("./", "../")) or (not Path(value).is_absolute() and candidate.exists()):
        return str(candidate.resolve())
    return value


def looks_like_hub_id(spec: str) -> bool:
    """``org/name`` that is not a local path or a recipe/config file: a Hugging Face hub id."""
    return (spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
            and not spec.endswith((".yaml", ".yml", ".json")) and not Path(spec.split("/", 1)[0]).exists())
