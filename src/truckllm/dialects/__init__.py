"""Inbound dialects: the client-facing APIs other than OpenAI chat, translated to and from the
one internal form, an OpenAI chat completion request and answer (the form every provider adapter
takes and gives). A dialect whose provider speaks it natively skips both translations: the body
and the events pass through as they are.

Pure functions over parsed JSON: no I/O, no routing, no knowledge of providers beyond the usage
type they report.
"""
