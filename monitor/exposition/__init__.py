"""The /metrics sink: per-endpoint state rendered when results change, kept as a chunked, compressed body, served
as cached bytes.
"""
