//! The `metrics-facade` feature: metric rows published as gauges through the `metrics` crate
//! (0.24), so any recorder or exporter installed by the application (Prometheus, StatsD, ...)
//! sees them.

use super::Metric;

/// The facade's name of a row: `<group>_<name>` with `-` as `_`, e.g.
/// `producer_metrics_record_send_rate` (the form Prometheus exporters accept unchanged).
pub fn facade_name(m: &Metric) -> String {
    let mut s = String::with_capacity(m.group.len() + m.name.len() + 1);
    s.push_str(m.group);
    s.push('_');
    s.push_str(m.name);
    s.replace('-', "_")
}

/// Sets one gauge per row on the current recorder (the thread's local one, else the global one),
/// labelled with the row's tags (`node_id`, `topic`). NaN values (an empty window) are skipped.
/// The producer calls it on its network thread every `statistics.interval.ms` (or every
/// `metrics.sample.window.ms` when statistics are off) and on each `Producer::metrics`; call it
/// with [`ClientMetrics::to_metrics`](crate::client::ClientMetrics::to_metrics) for a bare
/// NetworkClient.
pub fn publish(rows: &[Metric]) {
    for m in rows {
        if m.value.is_nan() {
            continue;
        }
        let labels: Vec<metrics::Label> = m
            .tags
            .iter()
            .map(|(k, v)| metrics::Label::new(k.replace('-', "_"), v.clone()))
            .collect();
        metrics::gauge!(facade_name(m), labels).set(m.value);
    }
}
