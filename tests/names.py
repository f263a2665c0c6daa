"""The series names a Prometheus scrape shows, for the tests that check names against the
catalogue, the dashboard and the alert rules.

``prometheus.metric_name`` is the name the package gives a family; the exposition library
(prometheus_client's ``CounterMetricFamily``) adds ``_total`` to a counter's samples, as the
OpenMetrics text format requires. tests/test_prometheus.py checks this against what
``prometheus.render`` writes.
"""

from __future__ import annotations

from container_netstat import metrics, prometheus


def exposed_name(falcon_name: str, counter_type: str) -> str:
    """The series name a scrape shows: counters end in ``_total``."""
    name = prometheus.metric_name(falcon_name)
    return name + "_total" if counter_type == metrics.COUNTER else name
