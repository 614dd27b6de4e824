"""Google Gemini (``generateContent``): the adapter.

Routes, keys, usage, the meter, errors, counting and the model list are in ``wire``;
requests go to and from the internal form in ``to_chat`` and ``from_chat``, whole
responses in ``bodies``, streams in ``streams``.

Mapping decisions (Gemini ⇄ the internal Chat form)
----------------------------------------------------
* Field names are read in both proto-JSON spellings (``systemInstruction`` and
  ``system_instruction``); Gemini bodies Corral writes are camelCase.
* Turns. ``systemInstruction`` ⇄ the first system message (system or developer messages
  after the conversation has started are refused going to Gemini). ``user`` / ``model``
  contents ⇄ user / assistant messages. Model text parts ⇄ ``content``, thought parts
  (``thought: true``) ⇄ ``reasoning_content``; ``thoughtSignature`` is dropped going to
  the hub; going to Gemini the first function call of a model turn carries Google's
  documented stand-in signature ``skip_thought_signature_validator`` (Gemini 3 refuses
  function-call history without one).
* Media. ``inlineData`` images ⇄ data-URL ``image_url``; inline PDFs ⇄ ``file`` parts;
  ``fileData`` with a public http(s) image URL ⇄ an ``image_url`` URL. Other inline
  types (audio, video), Google file URIs (Files API, ``gs://``, YouTube) and
  ``videoMetadata`` are refused.
* Functions. ``functionCall`` ⇄ assistant ``tool_calls`` (``args`` object ⇄ JSON
  argument text); a call without ``id`` gets a stable one (``tool_call_id`` of the turn's
  path and position, or of the response id). ``functionResponse`` ⇄ a ``tool`` message,
  paired with the call of the same id, else the first unanswered call of the same name
  in the model turn before it; ``{"output": text}`` ⇄ the text itself, any other
  response as JSON text (a tool message whose text is a JSON object goes to Gemini as
  that object). Going to Gemini the function's name is found from the assistant's tool
  call with the message's ``tool_call_id``. Tool messages and the user message after
  them make one user turn.
* Tools. ``functionDeclarations`` ⇄ function tools: ``parametersJsonSchema`` as it is,
  ``parameters`` (Google's OpenAPI subset) converted to JSON Schema (type names lower
  case, ``nullable`` → ``"null"`` in the type); going to Gemini ``parametersJsonSchema``
  is written and ``strict`` dropped (Gemini has no switch). Built-in tools
  (``googleSearch``, ``codeExecution``, ``urlContext``, …) are refused by name.
  ``functionCallingConfig`` AUTO/NONE/ANY ⇄ auto/none/required; ANY with one
  ``allowedFunctionNames`` ⇄ a forced function; several names, names with AUTO, and
  VALIDATED are refused. ``parallel_tool_calls: false`` is refused going to Gemini.
* Settings. ``maxOutputTokens`` ⇄ ``max_completion_tokens`` (the deployment's default
  when the hub request sets none); ``temperature``, ``topP``, ``topK`` (⇄ ``top_k``,
  the internal form's extension), ``seed``,
  ``presencePenalty``, ``frequencyPenalty`` as they are; ``stopSequences`` ⇄ ``stop``;
  ``candidateCount`` 1 ⇄ ``n`` 1 (more is refused). ``responseMimeType``
  ``application/json`` with ``responseJsonSchema`` or ``responseSchema`` ⇄
  ``response_format`` json_schema (named ``response``), without a schema ⇄ json_object;
  ``text/plain`` ⇄ nothing; other types refused. Log probabilities,
  non-text modalities, speech and image settings, routing and model selection,
  ``cachedContent`` and ``continuationToken`` are refused.
* Reasoning. ``thinkingLevel`` MINIMAL/LOW/MEDIUM/HIGH → the effort of that name;
  ``thinkingBudget`` 0 → none, up to 1024 → minimal, under 4096 → low, under 16384 →
  medium, more → high, -1 (dynamic) → the model's default. ``reasoning_effort`` →
  ``thinkingBudget`` none 0, minimal 1024, low 2048, medium 8192, high 16384, xhigh
  24576 (the most every Gemini 2.5 and 3 model takes; budgets work on both, levels only
  on 3), with ``includeThoughts`` on unless none. ``includeThoughts`` from a Gemini
  client is dropped: reasoning text comes back whenever the upstream sends it.
* Hints dropped: ``safetySettings``, ``labels``, ``serviceTier``, ``store``,
  ``mediaResolution``, ``enableEnhancedCivicAnswers`` (Gemini); ``user``,
  ``safety_identifier``, ``metadata``, ``store``, ``service_tier``, prompt-cache keys,
  ``stream_options`` (hub: a Google stream always reports usage).
* Finish reasons. STOP ⇄ stop (tool_calls when the answer called functions);
  MAX_TOKENS ⇄ length; SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII,
  IMAGE_SAFETY → content_filter (content_filter → SAFETY); a prompt blocked before any
  candidate → content_filter; other reasons (MALFORMED_FUNCTION_CALL, OTHER, …) → stop.
  The record keeps Google's own reason (``Outcome.finish_reason``).
* Usage. ``promptTokenCount`` (cached included) + ``toolUsePromptTokenCount`` ⇄
  ``prompt_tokens``; ``cachedContentTokenCount`` ⇄ ``cached_tokens``;
  ``candidatesTokenCount`` + ``thoughtsTokenCount`` ⇄ ``completion_tokens``;
  ``thoughtsTokenCount`` ⇄ ``reasoning_tokens``. Cache writes stay in the prompt count
  going to Gemini (it has no column for them).
* Responses the hub cannot carry (``executableCode``, ``codeExecutionResult`` or
  ``inlineData`` parts in an answer, function args that are not an object) raise
  ``UpstreamError``; in a stream they end it with an error event.
* Streams. Gemini → hub: a role chunk first, a delta per part, then at the event with a
  ``finishReason`` the finish chunk, the usage chunk and ``[DONE]`` (events after it are
  not read). Hub → Gemini: an event per chunk with text; tool-call fragments are
  buffered and every call goes out whole in the last event, with ``finishReason`` and
  ``usageMetadata``. A failing stream ends with Google's error object
  ``{"error": {"code", "message", "status"}}``, bare (no ``data:``), as Google sends it: older
  JavaScript SDKs (as bundled in Gemini CLI) raise with the status only on a bare one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.protocols.base import StreamTranslator, Turn
from corral.protocols.gemini.bodies import chat_response_to_gemini, gemini_response_to_chat
from corral.protocols.gemini.from_chat import chat_to_gemini
from corral.protocols.gemini.streams import ChatToGeminiStream, GeminiToChatStream
from corral.protocols.gemini.to_chat import gemini_to_chat
from corral.protocols.gemini.turn import gemini_turn
from corral.protocols.gemini.wire import GeminiWire


class GeminiAdapter(GeminiWire):
    def to_internal(self, body: dict[str, Any]) -> dict[str, Any]:
        return gemini_to_chat(body)

    def from_internal(
        self, internal: dict[str, Any], *, default_max: int, provider_kind: str
    ) -> dict[str, Any]:
        return chat_to_gemini(internal, default_max=default_max)

    def response_to_internal(self, body: dict[str, Any], *, model: str) -> dict[str, Any]:
        return gemini_response_to_chat(body, model=model)

    def response_from_internal(self, internal: dict[str, Any], *, model: str) -> dict[str, Any]:
        return chat_response_to_gemini(internal, model=model)

    def stream_to_internal(self, model: str) -> StreamTranslator | None:
        return GeminiToChatStream(model=model)

    def stream_from_internal(self, model: str) -> StreamTranslator | None:
        return ChatToGeminiStream(model=model)

    def turn(self, body: Mapping[str, Any]) -> Turn | None:
        return gemini_turn(body)


GEMINI = GeminiAdapter()

__all__ = ["GEMINI", "GeminiAdapter"]
