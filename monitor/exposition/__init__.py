"""The /metrics sink: per-endpoint state rendered when results change, kept as a chunked, compressed body, served
as cached bytes.

``sink`` feeds and publishes (:class:`~monitor.exposition.sink.MetricsSink`); ``families`` is the text format's
vocabulary (family table, buckets, label escaping, the shard label); ``endpoint`` one endpoint's state and lines;
``pages`` cuts endpoints into pages and blocks; ``body`` keeps the chunks, compressed by ``compression``;
``monitor_wide`` renders the monitor's own series; ``scrape`` defines the per-scrape renderers the daemon hands in
(what they show, the agents' liveness or the store's health, lives with its own room, which this package never
imports).
"""
