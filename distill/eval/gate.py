"""The --gate expression: a safe subset of Python over model.metric names, evaluated on the report."""

from __future__ import annotations

import ast
from typing import Any, Iterable

from distill.config import ConfigError
from distill.eval.report import _fmt

# The per-model numbers a --gate expression may name (model.metric).
GATE_METRICS = (
    "score",
    "score_ci_low",
    "score_ci_high",
    "agreement",
    "kl_to_teacher",
    "tokens_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "tokens_per_s_batch",
    "latency_p50_ms_batch",
    "latency_p95_ms_batch",
    "params",
    "rows",
    "failed_rows",
)


class GateUnavailable(Exception):
    """A value the gate names is missing (model failed, no teacher, ...)."""


_COMPARE_OPS = {
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
}


_BIN_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


MAX_GATE_CHARS = 500


def parse_gate(expr: str, model_names: Iterable[str]) -> ast.Expression:
    """Parse and check a gate expression: ``model.metric`` names, numbers, + - * /, comparisons,
    and/or/not, parentheses. Nothing is ever passed to eval(); every node is whitelisted."""
    names = set(model_names)
    if len(expr) > MAX_GATE_CHARS:  # a gate is a line a person reads; a huge one also risks deep recursion
        raise ConfigError(f"--gate: expression of {len(expr)} characters; at most {MAX_GATE_CHARS}")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:
        reason = f"{exc.msg} (column {exc.offset})" if isinstance(exc, SyntaxError) else str(exc)
        raise ConfigError(f"--gate: invalid expression {expr[:80]!r}: {reason}") from None

    def check(node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
            for value in node.values:
                check(value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
            check(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE_OPS for op in node.ops):
            check(node.left)
            for comparator in node.comparators:
                check(comparator)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            pass
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id not in names:
                raise ConfigError(f"--gate: unknown model '{node.value.id}' in {expr!r}; models: {', '.join(sorted(names))}")
            if node.attr not in GATE_METRICS:
                raise ConfigError(f"--gate: unknown metric '{node.attr}' in {expr!r}; metrics: {', '.join(GATE_METRICS)}")
        else:
            snippet = ast.get_source_segment(expr.strip(), node) or type(node).__name__
            raise ConfigError(
                f"--gate: '{snippet}' is not allowed in {expr!r}; use model.metric names, numbers, "
                "+ - * /, comparisons, and/or/not"
            )

    check(tree.body)
    if not (
        isinstance(tree.body, (ast.Compare, ast.BoolOp))
        or (isinstance(tree.body, ast.UnaryOp) and isinstance(tree.body.op, ast.Not))
    ):
        raise ConfigError(f"--gate: {expr!r} must be a comparison (e.g. 'student.score >= 0.9')")
    return tree


def evaluate_gate(tree: ast.Expression, models: dict[str, dict[str, Any]]) -> tuple[bool, dict[str, Any], str | None]:
    """(passed, {"model.metric": value}, why-unavailable). A missing value fails the gate."""
    values: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            values[f"{node.value.id}.{node.attr}"] = models.get(node.value.id, {}).get(node.attr)

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute):
            key = f"{node.value.id}.{node.attr}"  # type: ignore[attr-defined]
            if values[key] is None:
                entry = models.get(node.value.id, {})  # type: ignore[attr-defined]
                why = entry.get("error") or "not measured"
                raise GateUnavailable(f"{key} is unavailable ({why})")
            return values[key]
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(value(v) for v in node.values)
            return any(value(v) for v in node.values)
        if isinstance(node, ast.UnaryOp):
            operand = value(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise GateUnavailable("division by zero")
            return _BIN_OPS[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            left = value(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                right = value(comparator)
                if not _COMPARE_OPS[type(op)](left, right):
                    return False
                left = right
            return True
        raise AssertionError(type(node).__name__)  # parse_gate allows nothing else

    try:
        return bool(value(tree)), values, None
    except GateUnavailable as exc:
        return False, values, str(exc)


def gate_summary(gate: dict[str, Any]) -> str:
    values = ", ".join(f"{k} = {_fmt(v, 4)}" for k, v in gate["values"].items())
    verdict = "PASSED" if gate["passed"] else "FAILED"
    why = f"; {gate['unavailable']}" if gate.get("unavailable") else ""
    return f"gate: {gate['expr']} -> {verdict} ({values}){why}"
