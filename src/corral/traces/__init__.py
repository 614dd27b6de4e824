"""Trajectories: the span model, the journal and the record pipeline."""

from corral.traces.recorder import Recorder
from corral.traces.spans import SPAN_DEFAULTS, new_span_id, new_trace_id, parse_traceparent

__all__ = ["SPAN_DEFAULTS", "Recorder", "new_span_id", "new_trace_id", "parse_traceparent"]
