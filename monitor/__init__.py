"""connmon: a connectivity monitor for schools and clinics.

The package is split along the path a measurement takes (see ``shared/STYLE.md``):
config → targets → scheduler → probes → results → sinks (metrics, logs, later history),
with the CLI and the web server at the edge.
"""

__version__ = "0.1.0"
