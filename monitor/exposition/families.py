"""The text format's vocabulary: the per-endpoint families (name, type, help) in exposition order, the
histogram buckets, label escaping and the shard label.

It renders no series itself: :mod:`monitor.exposition.endpoint` writes an endpoint's lines, the
scrape-time renderers (:mod:`monitor.exposition.scrape` and the ones beside what they render) write
theirs, and all of them label and format numbers with the helpers here, so that every line is
written the same way::

    connmon_up{endpoint="school-001",kind="school",district="Aktobe",link="fibre",shard="2"} 1
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from monitor.text import scalar_text

# From a LAN (sub-millisecond) to geostationary satellite (~600 ms and more under load).
RTT_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0,
                       1.5, 2.5, 5.0)
CYCLE_BUCKETS_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# The text format writes floats as Go does (1e+06, +Inf, NaN); prometheus-client's helper is untyped.
floatToGoString = cast(Callable[[float], str], _untyped_float_to_go_string)

RTT_LE = [floatToGoString(b) for b in RTT_BUCKETS_SECONDS] + ["+Inf"]
CYCLE_LE = [floatToGoString(b) for b in CYCLE_BUCKETS_SECONDS] + ["+Inf"]


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format: backslash, double quote and newline.

    Any lone surrogate becomes U+FFFD, so every value renders as UTF-8: one odd value must never
    fail the whole exposition (issue 24; text from outside is also refused at the edge).
    """
    return scalar_text(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{key}="{escape_label_value(value)}"' for key, value in pairs)


@dataclass(frozen=True, slots=True)
class ShardLabels:
    """The ``shard="I"`` label every series carries with ``--shard I/N`` (none without)."""

    pairs: tuple[tuple[str, str], ...]  # (("shard", "I"),) or ()
    suffix: str  # ',shard="I"' or "", ready to paste after other pairs

    @classmethod
    def of(cls, shard: str | None) -> ShardLabels:
        pairs = (("shard", shard),) if shard is not None else ()
        return cls(pairs, "," + label_pairs(pairs) if shard is not None else "")

    def braces(self, pairs: str = "") -> str:
        """``{pairs,shard="I"}``, or ``{pairs}``, or nothing when there are no labels at all."""
        inner = (pairs + self.suffix) if pairs else self.suffix[1:]
        return f"{{{inner}}}" if inner else ""


# Per-endpoint families, in exposition order: (name, type, help).
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("connmon_endpoint_info", "gauge",
     "Descriptive labels of each configured endpoint, its roll-out status and provider included (value 1)."),
    ("connmon_target_bits_per_second", "gauge", "Download rate each probed endpoint is contracted to reach."),
    # Issue 11: what the contract says, only for sites whose contracted_mbps is set (it may differ from the target).
    ("connmon_contracted_bits_per_second", "gauge",
     "Download rate in the site's contract, where contracted_mbps is set."),
    ("connmon_up", "gauge", "1 if the endpoint answered at least one echo in its last ICMP cycle."),
    # Issue 21: the cause a site's silence is charged to, one series per state at 1 (kube-state-metrics' enum).
    ("connmon_site_state", "gauge",
     "1 for the site's state now, 0 for the others: up, down, upstream_down, monitor_cut_off, maintenance, power, "
     "unknown."),
    ("connmon_maintenance", "gauge", "1 while a maintenance window holds the site (declared in the config, or opened "
     "through the API on the site or an upstream node above it), else 0."),
    ("connmon_icmp_loss_ratio", "gauge", "Share of echoes without a reply in the last ICMP cycle."),
    ("connmon_icmp_jitter_seconds", "gauge",
     "Mean absolute RTT difference of consecutive echoes in the last ICMP cycle."),
    ("connmon_icmp_rtt_last_seconds", "gauge", "Minimum, average and maximum RTT of the last ICMP cycle."),
    ("connmon_icmp_rtt_seconds", "histogram", "Round-trip time of every answered echo."),
    ("connmon_icmp_packets_sent_total", "counter", "Echo requests sent."),
    ("connmon_icmp_packets_received_total", "counter", "Echo replies received within the timeout."),
    ("connmon_probe_errors_total", "counter",
     "ICMP cycles in which an endpoint could not be probed or answered only with ICMP unreachable, and "
     "throughput tests that failed or were skipped, by probe and reason."),
    ("connmon_last_probe_timestamp_seconds", "gauge", "Unix time the endpoint's last cycle or test started, by probe."),
    # Throughput (issue 3): only endpoints with a throughput method have these. Directions are the site's.
    ("connmon_target_upload_bits_per_second", "gauge", "Upload rate each endpoint is contracted to reach, if set."),
    ("connmon_throughput_bits_per_second", "gauge",
     "Receiver-side rate of the last test that measured it, by direction as seen from the site."),
    ("connmon_target_met", "gauge",
     "1 if the last test that measured the site reached its target (download, and upload when set), else 0."),
    # Issue 6: "below target for the last N tests" needs a count in a row; no PromQL window can count tests.
    ("connmon_target_missed_consecutive_tests", "gauge",
     "Tests in a row, up to the last that gave a verdict, that missed the target (0 after one that met it)."),
    ("connmon_throughput_last_test_timestamp_seconds", "gauge", "Unix time the last test that measured started."),
    ("connmon_throughput_test_duration_seconds", "gauge", "Wall time of the last test, all directions."),
    ("connmon_throughput_tests_total", "counter", "Throughput tests run or skipped, whatever their outcome."),
    ("connmon_throughput_bytes_total", "counter",
     "Bytes moved by throughput tests (warm-up and latency-under-load echoes included, as a metered link bills "
     "them), by direction."),
    ("connmon_throughput_tcp_retransmits_total", "counter",
     "TCP segments retransmitted during throughput tests where the method can tell, by direction."),
    ("connmon_throughput_budget_remaining_bytes", "gauge",
     "Bytes the site's throughput tests may still move this month (only with monthly_budget)."),
    # Issue 20: latency under load, from ICMP echoes just before (idle) and during (loaded) each direction.
    ("connmon_throughput_idle_rtt_seconds", "gauge",
     "Median ICMP RTT to the site just before the last sampled test of each direction."),
    # A summary (quantiles only, of the last sampled test): promtool allows the quantile label on no other type.
    ("connmon_throughput_loaded_rtt_seconds", "summary",
     "Median (quantile 0.5) and 90th percentile (0.9) ICMP RTT while the last sampled test of each direction ran."),
    ("connmon_throughput_added_latency_seconds", "gauge",
     "Loaded median RTT minus idle median RTT of the last sampled test, by direction."),
    ("connmon_throughput_round_trips_per_minute", "gauge",
     "Responsiveness as the IETF draft counts it, 60 / loaded median RTT in seconds, by direction."),
    ("connmon_latency_under_load_ok", "gauge",
     "1 if the last sampled test's added latency stayed within max_added_latency in every direction, else 0."),
    ("connmon_pep_detected", "gauge",
     "1 if the last judged test's TCP handshakes were answered in under half the idle ICMP RTT: a proxy (PEP) "
     "terminates TCP before the site, so speed figures include it; else 0."),
)
FAMILY_INDEX = {name: index for index, (name, _, _) in enumerate(FAMILIES)}
# One chunk per family, in front of its endpoints' blocks.
HEADERS = tuple(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode() for name, kind, help_text in FAMILIES)
