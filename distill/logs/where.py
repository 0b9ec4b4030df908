"""``--where``: a predicate over a log record's request metadata.

    team == "search" and (env != "dev" or exists(canary)) and not tier in ["free", "trial"]
    tags contains "beta"          user.plan == "pro"          meta["x-app"] == "web"

Names are metadata keys (``a.b`` reaches into nested objects; ``meta["odd key"]`` any key);
values are strings, numbers, booleans, ``null`` and lists. Operators: ``==``, ``!=``, ``in``,
``not in`` (a value in a list), ``contains`` (a list field holds a value), ``exists(name)``, and
``and`` / ``or`` / ``not`` with parentheses, nested as deep as needed. A comparison with a field
the record does not have is false (``!=`` as well); ``exists`` asks for presence. Bedrock's own
invocation-log filter takes one flat list of up to 16 equals terms; this takes any of the above.

Parsing goes through Python's ``ast`` with every node kind whitelisted; nothing is evaluated as
code.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from distill.config import ConfigError

MAX_CHARS = 2000
_MISSING = object()


class Where:
    """A parsed ``--where`` expression; ``fields`` is every metadata path it names."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        if len(expr) > MAX_CHARS:
            raise ConfigError(f"--where: expression of {len(expr)} characters; at most {MAX_CHARS}")
        # `a contains b` is not Python: spell it as a call before parsing
        source = re.sub(r"\bcontains\b", "@", expr)
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"--where: {expr!r} does not parse at column {exc.offset}: {exc.msg}") from None
        self.fields: set[str] = set()
        self._check(tree.body)
        self.tree = tree.body

    # -- checking ---------------------------------------------------------------------------

    def _path(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name) and node.id not in ("true", "false", "null"):
            return node.id
        if isinstance(node, ast.Attribute):
            base = self._path(node.value)
            return None if base is None else f"{base}.{node.attr}"
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "meta"
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            return node.slice.value
        return None

    def _check(self, node: ast.AST) -> None:
        bad = ConfigError
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self._check(node.operand)
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id == "exists" and len(node.args) == 1 and not node.keywords):
                raise bad(f"--where: {self.expr!r}: the only function is exists(name)")
            path = self._path(node.args[0])
            if path is None:
                raise bad(f"--where: {self.expr!r}: exists() takes a metadata name")
            self.fields.add(path)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):  # `contains`
            path = self._path(node.left)
            if path is None:
                raise bad(f"--where: {self.expr!r}: `contains` needs a metadata name on its left")
            self.fields.add(path)
            self._literal(node.right)
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise bad(f"--where: {self.expr!r}: one comparison at a time (join them with and/or)")
            if not isinstance(node.ops[0], (ast.Eq, ast.NotEq, ast.In, ast.NotIn)):
                raise bad(f"--where: {self.expr!r}: comparisons are ==, !=, in, not in, contains")
            path = self._path(node.left)
            if path is None:
                raise bad(f"--where: {self.expr!r}: the left of a comparison is a metadata name")
            self.fields.add(path)
            self._literal(node.comparators[0])
        else:
            raise bad(f"--where: {self.expr!r}: unexpected {type(node).__name__} (names, literals, ==, !=, in, not in, "
                      "contains, exists(), and, or, not)")

    def _literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
            return node.value
        if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[node.id]
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._literal(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        raise ConfigError(f"--where: {self.expr!r}: values are strings, numbers, true/false/null or [lists]")

    # -- evaluating -------------------------------------------------------------------------

    @staticmethod
    def lookup(metadata: dict[str, Any], path: str) -> Any:
        if path in metadata:
            return metadata[path]
        value: Any = metadata
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return _MISSING
            value = value[part]
        return value

    def __call__(self, metadata: dict[str, Any]) -> bool:
        return bool(self._eval(self.tree, metadata))

    def _eval(self, node: ast.AST, metadata: dict[str, Any]) -> bool:
        if isinstance(node, ast.BoolOp):
            values = (self._eval(v, metadata) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            return not self._eval(node.operand, metadata)
        if isinstance(node, ast.Call):
            return self.lookup(metadata, self._path(node.args[0])) is not _MISSING
        if isinstance(node, ast.BinOp):
            value = self.lookup(metadata, self._path(node.left))
            return isinstance(value, list) and self._literal(node.right) in value
        value = self.lookup(metadata, self._path(node.left))
        if value is _MISSING:
            return False
        other, op = self._literal(node.comparators[0]), node.ops[0]
        if isinstance(op, ast.Eq):
            return value == other
        if isinstance(op, ast.NotEq):
            return value != other
        inside = isinstance(other, list) and value in other
        return inside if isinstance(op, ast.In) else not inside
