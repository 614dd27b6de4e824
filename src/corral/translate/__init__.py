"""Cross-protocol translation: Anthropic Messages ⇄ OpenAI Chat Completions.

When a request in one protocol must be served by a deployment speaking the
other (Claude Code → a vLLM server; the openai SDK → an Anthropic
deployment), the gateway translates the request, then the response or the
stream back. Everything here is pure and synchronous: dicts and bytes in,
dicts and bytes out, no I/O, no clock.

Requests (``to_chat``, ``to_messages``)::

    messages_to_chat(body, *, max_tokens_field="max_completion_tokens") -> dict
    chat_to_messages(body, *, default_max_tokens=8192) -> dict

Whole responses and error bodies (``responses``)::

    chat_response_to_messages(resp, *, model) -> dict
    messages_response_to_chat(resp, *, model, created=0) -> dict
    openai_error_to_anthropic(status, body) -> bytes
    anthropic_error_to_openai(status, body) -> bytes

Streams (``streams``), fed upstream SSE bytes cut anywhere::

    ChatToMessagesStream(*, model)
    MessagesToChatStream(*, model, include_usage=True, created=0)
        .feed(chunk: bytes) -> bytes   # client SSE bytes, whole events only
        .close() -> bytes              # flush; an error event if the upstream stopped early
        .done                          # the client's stream has ended
        .outcome / .usage              # upstream usage in Corral's columns, ids, finish, error

``model`` is left as the caller gave it in requests (the gateway rewrites
it) and set to ``model`` in responses. Ids are derived from the upstream's
(``msg_…`` / ``chatcmpl-…`` from a hash), so the same upstream answer always
gets the same id. Meter from ``outcome.usage`` (the upstream's numbers), not
from the translated body: Corral's Chat usage reader does not read
``cache_write_tokens``, so cache writes would count as plain input.

Mapping decisions
-----------------
* System prompt. Messages → Chat: ``system`` (a string or text blocks)
  becomes the first ``system`` message; a mid-conversation ``system``
  message stays a ``system`` message in place. Chat → Messages: ``system``
  and ``developer`` messages before the first other message become the
  system prompt; one after it is refused, since Anthropic's system prompt
  precedes every message and moving it changes what the model reads when.
* Content. A single text block travels as a plain string (every server
  accepts it), several as a list of text parts. Anthropic base64 and url
  images ⇄ ``image_url`` parts (base64 as data URLs); ``detail`` is a
  resolution hint and is dropped. A base64 PDF ``document`` ⇄ a ``file``
  part with ``file_data`` (the title is the filename).
* Tools. ``tools`` ⇄ function tools (``input_schema`` ⇄ ``parameters``,
  ``strict`` kept); ``tool_choice`` auto/any/tool/none ⇄
  auto/required/{function}/none; ``disable_parallel_tool_use`` ⇄
  ``parallel_tool_calls: false``. ``tool_use`` blocks ⇄ ``tool_calls`` with
  JSON-text arguments (empty argument text reads as ``{}``). Text after a
  tool_use in the same assistant turn moves before the calls (Chat holds
  one content and one list of calls).
* Tool results. A user message's ``tool_result`` blocks become ``tool``
  messages placed first (Chat wants them right after the calls), then the
  rest of the user message. Chat tool messages hold text only, so images
  in a tool result move, in order, to the front of that user message.
  ``is_error`` shows as a leading ``Error: `` in the result text (Chat has
  no flag; the leading text is not read back). Chat → Messages: consecutive
  tool messages and the user message after them make one user message.
* Reasoning. Thinking blocks in assistant history are dropped going to
  Chat (one model's signed reasoning; Chat requests have no field), as are
  ``reasoning_content``/``reasoning`` coming back. ``thinking`` with a budget
  → ``reasoning_effort`` (under 4096 tokens low, under 16384 medium, else
  high); ``output_config.effort`` maps by name (max → xhigh) and wins;
  adaptive or disabled thinking leaves the model's default.
  ``reasoning_effort`` → ``thinking`` with a budget (minimal 1024, low 2048,
  medium 8192, high 16384, xhigh 32768, cut to ``max_tokens - 1``);
  ``none`` → disabled, and so is a request answering tool calls (Anthropic
  then wants the continued turn's signed thinking, which Chat never holds).
  Responses: Chat ``reasoning_content``/``reasoning`` ⇄ thinking blocks
  (empty signature) and ``reasoning_content``.
* Limits and sampling. ``max_tokens`` ⇄ ``max_completion_tokens`` (or
  ``max_tokens``; the field written is the caller's choice; the default
  when a Chat request sets none is ``default_max_tokens``). ``temperature``,
  ``top_p`` as they are; ``stop_sequences`` ⇄ ``stop``.
  ``metadata.user_id`` ⇄ ``user`` (or ``safety_identifier``). ``stream``
  as it is; a Chat stream always asks for ``include_usage``.
  ``output_config.format`` (json_schema) ⇄ ``response_format`` json_schema.
* Hints dropped, because they change how a provider works and not what the
  model reads: ``cache_control`` everywhere (OpenAI-compatible servers cache
  prefixes on their own), ``service_tier``, ``speed``,
  ``context_management`` (Messages) and ``seed``, ``service_tier``,
  ``prompt_cache_key``, ``prompt_cache_retention``, ``prompt_cache_options``,
  ``metadata``, ``stream_options`` (Chat). Citations on text blocks are
  annotations of text that is kept.
* Stop reasons. stop → end_turn (tool_use if the answer called tools),
  length → max_tokens, tool_calls → tool_use, content_filter → refusal;
  back: end_turn/stop_sequence/pause_turn → stop, max_tokens and
  model_context_window_exceeded → length, tool_use → tool_calls, refusal →
  content_filter. Chat cannot say which stop sequence matched, so
  ``stop_sequence`` is always null.
* Usage. Chat ``prompt_tokens`` (cache reads and writes included) ⇄
  ``input_tokens`` + ``cache_read_input_tokens`` +
  ``cache_creation_input_tokens``; ``prompt_tokens_details.cached_tokens`` ⇄
  ``cache_read_input_tokens``; ``prompt_tokens_details.cache_write_tokens``
  (sent only when non-zero) ⇄ ``cache_creation_input_tokens``;
  ``completion_tokens`` (reasoning included) ⇄ ``output_tokens``;
  ``completion_tokens_details.reasoning_tokens`` ⇐
  ``output_tokens_details.thinking_tokens``.

OpenAI Responses served over Chat Completions (``responses_chat``)
------------------------------------------------------------------
Codex CLI or ``client.responses`` in front of a Chat-only server (vLLM)::

    responses_to_chat(body, *, max_tokens_field="max_completion_tokens") -> dict
    chat_response_to_responses(resp, *, model, created=0) -> dict
    ChatToResponsesStream(*, model, created=0)   # .feed/.close/.done/.outcome as above

``instructions`` becomes the first system message and ``developer``
messages system ones; ``function_call`` items become assistant
``tool_calls`` (joined to the assistant message before them),
``function_call_output`` items ``tool`` messages; ``reasoning`` items are
dropped. ``text.format`` json_schema/json_object → ``response_format``;
``reasoning.effort`` → ``reasoning_effort``. Dropped as hints:
``store: false``, ``background: false``, ``truncation: disabled``,
``metadata``, ``prompt_cache_key``, ``service_tier``, ``stream_options``,
``text.verbosity``, ``reasoning.summary``, and
``include: ["reasoning.encrypted_content"]`` (nothing to include).
Refused: ``previous_response_id``, ``conversation``, ``prompt``,
``store: true``, ``background: true``, ``truncation: auto``,
``max_tool_calls``, ``top_logprobs``, any other ``include``, tools and
tool choices other than functions, items other than messages, calls,
call outputs and reasoning, file-id images and ``input_file`` parts,
images in tool outputs, unknown top-level fields. Back: reasoning text → a
reasoning item, text and refusals → one message item, tool calls →
function_call items; a ``length`` stop → ``status: incomplete``
(``max_output_tokens``), ``content_filter`` → incomplete (content_filter).

Refused, with :class:`~corral.errors.InvalidRequest` naming the field
------------------------------------------------------------------------
To Chat: ``top_k``, ``container``, ``mcp_servers``, ``inference_geo``,
unknown top-level fields, ``metadata`` keys other than ``user_id``,
``output_config`` keys other than ``effort`` and ``format``, server and
Anthropic-defined tools (any ``tools[].type`` but ``custom``), file-id
image sources, documents that are not base64 PDFs or that ask for
citations or carry ``context``, blocks of other types (``search_result``,
``server_tool_use``, ``web_search_tool_result``, …), and a final assistant
message (prefill: Chat would not continue it).

To Messages: ``n`` > 1, ``logprobs``, ``top_logprobs``, ``logit_bias``,
``frequency_penalty``/``presence_penalty`` other than 0, ``audio`` and
audio ``modalities``, ``input_audio`` parts, ``store: true``,
``prediction``, ``web_search_options``, ``verbosity``, ``moderation``,
the deprecated ``functions``/``function_call``, unknown top-level fields,
``temperature`` above 1, ``response_format`` json_object, custom tools and
``allowed_tools`` choices, message ``name``, assistant ``audio``, file-id
files and non-PDF files, non-base64 data URLs, tool-call arguments that are
not a JSON object, a system or developer message after the conversation
has started, ``reasoning_effort`` when ``max_tokens`` leaves no room for
1024 thinking tokens, and a final assistant message without tool calls.

Responses the other side cannot carry (an upstream tool call whose
arguments are not a JSON object, server-tool blocks) raise
:class:`~corral.errors.UpstreamError`; in a stream they end it with an
error event.
"""

from __future__ import annotations

from corral.translate.responses import (
    anthropic_error_to_openai,
    chat_response_to_messages,
    messages_response_to_chat,
    openai_error_to_anthropic,
)
from corral.translate.responses_chat import chat_response_to_responses, responses_to_chat
from corral.translate.responses_chat_streams import ChatToResponsesStream
from corral.translate.streams import ChatToMessagesStream, MessagesToChatStream
from corral.translate.to_chat import messages_to_chat
from corral.translate.to_messages import chat_to_messages

__all__ = [
    "ChatToMessagesStream",
    "ChatToResponsesStream",
    "MessagesToChatStream",
    "anthropic_error_to_openai",
    "chat_response_to_messages",
    "chat_response_to_responses",
    "chat_to_messages",
    "messages_response_to_chat",
    "messages_to_chat",
    "openai_error_to_anthropic",
    "responses_to_chat",
]
