"""Request-log readers: one small function per format, each turning one decoded JSON record into a
``LogEntry`` (the conversation as plain role/text turns, the logged response, and the lineage).

- ``openai``: one object per request as OpenAI-compatible gateways log them: ``request`` (the
  chat-completions body: ``model``, ``messages``, sampling parameters), ``response`` (the
  ``chat.completion`` body, or the list of ``chat.completion.chunk`` objects of a streamed call),
  ``metadata``, a timestamp (``timestamp`` / ``created_at`` / ``time``: ISO 8601 or epoch seconds),
  ``request_id`` / ``id``, and an error (``error``, or ``status_code`` >= 400).
- ``litellm``: LiteLLM's ``StandardLoggingPayload`` as its file / S3 / GCS loggers write it (``id``,
  ``trace_id``, ``status``, ``startTime``, ``model``, ``messages``, ``response``, ``metadata``,
  ``request_tags``, ``error_str``).
- ``bedrock``: Amazon Bedrock model-invocation logs (``schemaType: ModelInvocationLog``:
  ``requestId``, ``timestamp``, ``modelId``, ``operation``, ``input.inputBodyJson``,
  ``output.outputBodyJson``, ``requestMetadata``, ``errorCode``), with Converse bodies, Anthropic
  Messages and single-text InvokeModel bodies, and streamed outputs (lists of chunks); also the
  ``recordId`` / ``modelInput`` / ``modelOutput`` records of Bedrock batch inference.

Non-text parts (images, audio, documents) and tool calls and tool results are left out of the
text, counted per kind in ``LogEntry.dropped``; a turn left without text is dropped.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

FORMATS = ("openai", "litellm", "bedrock")


class NotThisFormat(ValueError):
    """The record is not of the format asked for (the message says what is missing)."""


@dataclass
class LogEntry:
    format: str
    request_id: str | None
    timestamp: _dt.datetime | None
    model: str | None
    metadata: dict[str, Any]
    ok: bool
    error: str | None
    turns: list[dict[str, str]]  # the request's conversation: role (system|user|assistant) + text
    response: str | None
    conversation: str | None = None  # conversation / session / trace id, when the log has one
    dropped: Counter = field(default_factory=Counter)  # non-text parts and tool turns left out


# -- shared helpers ---------------------------------------------------------------------------

def parse_time(value: Any) -> _dt.datetime | None:
    """ISO 8601 (a trailing Z allowed; naive = UTC) or epoch seconds/milliseconds -> aware UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) / (1000.0 if value > 1e11 else 1.0)
        return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        if " " in text and "T" not in text:
            text = text.replace(" ", "T", 1)
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError:
            try:
                return parse_time(float(value))
            except ValueError:
                raise NotThisFormat(f"timestamp {value!r} is neither ISO 8601 nor epoch seconds") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)
    raise NotThisFormat(f"timestamp of type {type(value).__name__}")


def _part_kind(part: dict[str, Any]) -> str:
    kind = part.get("type")
    if isinstance(kind, str):
        return {"image_url": "image", "input_image": "image", "input_audio": "audio", "tool_use": "tool_call",
                "function_call": "tool_call", "tool_result": "tool_result", "function_call_output": "tool_result",
                "file": "document", "input_file": "document"}.get(kind, kind)
    for key, kind in (("image", "image"), ("document", "document"), ("video", "video"), ("audio", "audio"),
                      ("toolUse", "tool_call"), ("toolResult", "tool_result"), ("reasoningContent", "reasoning"),
                      ("cachePoint", "cache_point"), ("guardContent", "guard")):
        if key in part:
            return kind
    return "unknown_part"


def content_text(content: Any, dropped: Counter) -> str:
    """The text of a message's content: a string, or a list of parts (OpenAI ``{"type": "text",
    "text"}``, Anthropic ``{"type": "text"}``, Bedrock Converse ``{"text"}``); other parts counted."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise NotThisFormat(f"message content of type {type(content).__name__}")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str) and part.get("type", "text") in ("text", "input_text", "output_text"):
            texts.append(part["text"])
        elif isinstance(part, dict):
            dropped[_part_kind(part)] += 1
        else:
            raise NotThisFormat(f"content part of type {type(part).__name__}")
    return "\n".join(t for t in texts if t)


_ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
          "model": "assistant", "bot": "assistant"}


def normalize_turns(messages: Any, dropped: Counter, system: Any = None) -> list[dict[str, str]]:
    """OpenAI / Anthropic / Converse messages -> [{"role", "content"}] of system, user and assistant
    text turns: tool results and tool-call-only turns dropped (counted), consecutive turns of one
    role merged, a separate system prompt (Anthropic ``system``, Converse ``system``) put first."""
    if not isinstance(messages, list):
        raise NotThisFormat("messages is not a list")
    turns: list[dict[str, str]] = []
    system_text = content_text(system, dropped) if system is not None else ""
    if system_text.strip():
        turns.append({"role": "system", "content": system_text})
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise NotThisFormat("a message without a role")
        role = str(message["role"]).lower()
        if role in ("tool", "function", "ipython"):
            dropped["tool_result"] += 1
            continue
        if role not in _ROLES:
            raise NotThisFormat(f"unknown message role {message['role']!r}")
        role = _ROLES[role]
        if message.get("tool_calls") or message.get("function_call"):
            dropped["tool_call"] += len(message.get("tool_calls") or [1])
        text = content_text(message.get("content"), dropped)
        if not text.strip():
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n\n" + text}
        else:
            turns.append({"role": role, "content": text})
    return turns


def _openai_response_text(response: Any, dropped: Counter) -> str | None:
    """A chat.completion body, a legacy completion, or a list of streamed chunks -> the text."""
    if response is None:
        return None
    if isinstance(response, str):
        return response
    if isinstance(response, list):  # streamed: chat.completion.chunk objects
        pieces = []
        for chunk in response:
            for choice in (chunk.get("choices") or []) if isinstance(chunk, dict) else []:
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                if delta.get("tool_calls"):
                    dropped["tool_call"] += 1
                if isinstance(delta.get("content"), str):
                    pieces.append(delta["content"])
                elif isinstance(choice.get("text"), str):
                    pieces.append(choice["text"])
        return "".join(pieces)
    if isinstance(response, dict):
        choices = response.get("choices") or []
        if choices:
            first = choices[0]
            message = first.get("message")
            if isinstance(message, dict):
                if message.get("tool_calls"):
                    dropped["tool_call"] += len(message["tool_calls"])
                return content_text(message.get("content"), dropped)
            if isinstance(first.get("text"), str):
                return first["text"]
        if "output_text" in response and isinstance(response["output_text"], str):
            return response["output_text"]
    return None


def _first(obj: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if obj.get(key) not in (None, ""):
            return obj[key]
    return None


def _conversation_id(metadata: dict[str, Any]) -> str | None:
    value = _first(metadata, "conversation_id", "session_id", "thread_id", "conversationId", "sessionId")
    return None if value is None else str(value)


# -- the readers ------------------------------------------------------------------------------

def read_openai(record: dict[str, Any]) -> LogEntry:
    request = record.get("request")
    if not isinstance(request, dict):
        raise NotThisFormat("no 'request' object")
    body = request.get("body") if isinstance(request.get("body"), dict) else request
    dropped: Counter = Counter()
    if "messages" in body:
        turns = normalize_turns(body["messages"], dropped)
    elif isinstance(body.get("prompt"), str):
        turns = [{"role": "user", "content": body["prompt"]}]
    else:
        raise NotThisFormat("the request has neither 'messages' nor a text 'prompt'")
    response = record.get("response")
    if isinstance(response, dict) and isinstance(response.get("body"), (dict, list)):
        response = response["body"]
    status = record.get("status_code")
    if status is None and isinstance(record.get("response"), dict):
        status = record["response"].get("status_code")
    error = record.get("error") or (response.get("error") if isinstance(response, dict) else None)
    if not error and isinstance(status, int) and status >= 400:
        error = f"HTTP {status}"
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    request_id = _first(record, "request_id", "id")
    if request_id is None and isinstance(response, dict):
        request_id = response.get("id")
    return LogEntry(
        format="openai", request_id=_str(request_id),
        timestamp=parse_time(_first(record, "timestamp", "created_at", "time", "start_time")),
        model=_str(body.get("model") or (response.get("model") if isinstance(response, dict) else None)),
        metadata=metadata, ok=not error, error=_str(error if not isinstance(error, dict) else error.get("message") or error),
        turns=turns, response=None if error else _openai_response_text(response, dropped),
        conversation=_conversation_id(metadata) or _str(body.get("user")), dropped=dropped)


def read_litellm(record: dict[str, Any]) -> LogEntry:
    if "call_type" not in record or "startTime" not in record:
        raise NotThisFormat("no 'call_type' / 'startTime' (not a LiteLLM StandardLoggingPayload)")
    dropped: Counter = Counter()
    messages = record.get("messages")
    if isinstance(messages, str):
        turns = [{"role": "user", "content": messages}]
    elif isinstance(messages, dict):
        turns = normalize_turns(messages.get("messages") or [messages], dropped)
    else:
        turns = normalize_turns(messages or [], dropped)
    metadata = dict(record.get("metadata") or {})
    for key in ("requester_metadata", "spend_logs_metadata"):  # what the caller attached to the request
        if isinstance(metadata.get(key), dict):
            metadata = {**metadata[key], **{k: v for k, v in metadata.items() if k != key}}
    if record.get("request_tags"):
        metadata.setdefault("tags", record["request_tags"])
    if record.get("end_user"):
        metadata.setdefault("end_user", record["end_user"])
    failed = record.get("status") == "failure"
    error = record.get("error_str") or ((record.get("error_information") or {}).get("error_message") if failed else None)
    trace = record.get("trace_id")
    return LogEntry(
        format="litellm", request_id=_str(record.get("id")), timestamp=parse_time(record.get("startTime")),
        model=_str(record.get("model")), metadata=metadata, ok=not failed, error=_str(error if failed else None),
        turns=turns, response=None if failed else _openai_response_text(record.get("response"), dropped),
        conversation=_conversation_id(metadata) or (str(trace) if trace and trace != record.get("id") else None),
        dropped=dropped)


def _bedrock_body(body: Any, dropped: Counter) -> list[dict[str, str]]:
    if not isinstance(body, dict):
        raise NotThisFormat("the input body is not a JSON object (inputBodyS3Path bodies are not fetched)")
    if "messages" in body:  # Converse, Anthropic Messages, and OpenAI-style bodies
        return normalize_turns(body["messages"], dropped, system=body.get("system"))
    for key in ("inputText", "prompt", "message", "input"):  # Titan, Llama / Mistral, Cohere
        if isinstance(body.get(key), str):
            return [{"role": "user", "content": body[key]}]
    raise NotThisFormat("the input body has no 'messages', 'inputText' or 'prompt'")


def _bedrock_output_text(body: Any, dropped: Counter) -> str | None:
    if body is None:
        return None
    if isinstance(body, list):  # a streamed response: its chunks, in order
        pieces = []
        for chunk in body:
            if not isinstance(chunk, dict):
                continue
            delta = (chunk.get("contentBlockDelta") or {}).get("delta") or chunk.get("delta") or {}
            if isinstance(delta.get("text"), str):
                pieces.append(delta["text"])
            elif isinstance(chunk.get("outputText"), str):
                pieces.append(chunk["outputText"])
            elif isinstance(chunk.get("generation"), str):
                pieces.append(chunk["generation"])
        return "".join(pieces)
    if not isinstance(body, dict):
        return str(body)
    message = (body.get("output") or {}).get("message") if isinstance(body.get("output"), dict) else None
    if isinstance(message, dict):  # Converse
        return content_text(message.get("content"), dropped)
    if isinstance(body.get("content"), list):  # Anthropic Messages
        return content_text(body["content"], dropped)
    if isinstance(body.get("results"), list) and body["results"]:  # Titan
        return str(body["results"][0].get("outputText", ""))
    for key in ("generation", "completion", "outputText", "text"):
        if isinstance(body.get(key), str):
            return body[key]
    return None


def read_bedrock(record: dict[str, Any]) -> LogEntry:
    dropped: Counter = Counter()
    if "modelInput" in record:  # batch inference record
        turns = _bedrock_body(record["modelInput"], dropped)
        error = record.get("error")
        return LogEntry(format="bedrock", request_id=_str(record.get("recordId")), timestamp=None,
                        model=_str(record.get("modelId")), metadata={}, ok=not error, error=_str(error), turns=turns,
                        response=None if error else _bedrock_output_text(record.get("modelOutput"), dropped), dropped=dropped)
    if record.get("schemaType") not in (None, "ModelInvocationLog") or "modelId" not in record or "input" not in record:
        raise NotThisFormat("no 'modelId' / 'input' (not a Bedrock model-invocation log record)")
    source = record["input"] or {}
    turns = _bedrock_body(source.get("inputBodyJson"), dropped)
    metadata = dict(record.get("requestMetadata") or {})
    error = record.get("errorCode")
    output = record.get("output") or {}
    return LogEntry(
        format="bedrock", request_id=_str(record.get("requestId")), timestamp=parse_time(record.get("timestamp")),
        model=_str(record.get("modelId")), metadata=metadata, ok=not error, error=_str(error), turns=turns,
        response=None if error else _bedrock_output_text(output.get("outputBodyJson"), dropped),
        conversation=_conversation_id(metadata), dropped=dropped)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


READERS: dict[str, Callable[[dict[str, Any]], LogEntry]] = {
    "openai": read_openai, "litellm": read_litellm, "bedrock": read_bedrock}


def detect(record: dict[str, Any]) -> str | None:
    """The format a record looks like, or None."""
    if record.get("schemaType") == "ModelInvocationLog" or ("modelId" in record and ("input" in record or "modelInput" in record)):
        return "bedrock"
    if "call_type" in record and "startTime" in record:
        return "litellm"
    if isinstance(record.get("request"), dict):
        return "openai"
    return None
