//! The Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::{BUCKETS, Histogram, IstioMetrics, Key, Reporter, Series, SeriesTable};

/// One series to render: reporter, destination, labels, counts.
type Row<'a> = (Reporter, Option<&'a str>, Key, &'a Series);

/// Writes `value` as a label value: backslash, quote and newline escaped.
pub(crate) fn label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Istio's `destination_service` of a cluster: the host of an
/// `outbound|port|subset|host` name, else the name.
fn destination_service(cluster: Option<&str>) -> &str {
    match cluster {
        None => "unknown",
        Some(c) => c.rsplit('|').next().unwrap_or(c),
    }
}

fn labels(out: &mut String, m: &IstioMetrics, row: &Row<'_>) {
    let (reporter, cluster, k, _) = row;
    let (source, dest) = match reporter {
        Reporter::Source => (&*m.workload, "unknown"),
        Reporter::Destination => ("unknown", &*m.workload),
    };
    out.push_str("reporter=\"");
    out.push_str(reporter.as_str());
    out.push_str("\",source_workload=\"");
    label(out, source);
    out.push_str("\",destination_workload=\"");
    label(out, dest);
    out.push_str("\",destination_service=\"");
    label(out, destination_service(*cluster));
    let _ = write!(out, "\",response_code=\"{}\"", k.code);
    out.push_str(",grpc_response_status=\"");
    if let Some(g) = k.grpc_status {
        let _ = write!(out, "{g}");
    }
    out.push_str("\",response_flags=\"");
    out.push_str(k.flag.as_str());
    out.push_str("\",request_protocol=\"");
    out.push_str(k.protocol.as_str());
    out.push('"');
}

fn histogram(
    out: &mut String,
    name: &str,
    m: &IstioMetrics,
    series: &[Row<'_>],
    pick: fn(&Series) -> &Histogram,
) {
    for k in series {
        let h = pick(k.3);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let _ = write!(out, "{name}_bucket{{");
            labels(out, m, k);
            let _ = writeln!(out, ",le=\"{bound}\"}} {cumulative}");
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = write!(out, "{name}_bucket{{");
        labels(out, m, k);
        let _ = writeln!(out, ",le=\"+Inf\"}} {count}");
        let _ = write!(out, "{name}_sum{{");
        labels(out, m, k);
        let sum = h.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "}} {sum}");
        let _ = write!(out, "{name}_count{{");
        labels(out, m, k);
        let _ = writeln!(out, "}} {count}");
    }
}

pub(super) fn istio(m: &IstioMetrics, tables: &[(Reporter, &SeriesTable)], out: &mut String) {
    let series: Vec<Row<'_>> = tables
        .iter()
        .flat_map(|&(reporter, t)| {
            let cluster = t.destination().map(|c| c.as_str());
            t.series().map(move |(k, s)| (reporter, cluster, k, s))
        })
        .collect();
    let dropped: u64 = tables.iter().map(|(_, t)| t.dropped()).sum();
    out.push_str("# HELP istio_requests_total Total number of requests.\n");
    out.push_str("# TYPE istio_requests_total counter\n");
    for row in &series {
        out.push_str("istio_requests_total{");
        labels(out, m, row);
        let _ = writeln!(out, "}} {}", row.3.requests.load(Ordering::Relaxed));
    }
    out.push_str("# HELP istio_request_duration_milliseconds Request duration.\n");
    out.push_str("# TYPE istio_request_duration_milliseconds histogram\n");
    histogram(
        out,
        "istio_request_duration_milliseconds",
        m,
        &series,
        |s| &s.duration_ms,
    );
    out.push_str("# HELP istio_request_bytes Request body sizes.\n");
    out.push_str("# TYPE istio_request_bytes histogram\n");
    histogram(out, "istio_request_bytes", m, &series, |s| &s.request_bytes);
    out.push_str("# HELP istio_response_bytes Response body sizes.\n");
    out.push_str("# TYPE istio_response_bytes histogram\n");
    histogram(out, "istio_response_bytes", m, &series, |s| {
        &s.response_bytes
    });
    out.push_str("# HELP mesh_metrics_series_dropped_total Requests not recorded: their destination had no free series slot.\n");
    out.push_str("# TYPE mesh_metrics_series_dropped_total counter\n");
    let _ = writeln!(out, "mesh_metrics_series_dropped_total {dropped}");
}

/// One family of per-cluster samples.
fn per_cluster(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (cluster, v) in rows {
        let _ = write!(out, "{name}{{cluster=\"");
        label(out, cluster);
        let _ = writeln!(out, "\"}} {v}");
    }
}

/// The mesh's internal counters (see [`Mesh::prometheus_text`](crate::Mesh::prometheus_text)).
pub(crate) fn render_mesh(mesh: &crate::Mesh, out: &mut String) {
    type Row = (String, u64);
    let mut retries: Vec<Row> = Vec::new();
    let mut refused: Vec<Row> = Vec::new();
    let mut overflow: Vec<Row> = Vec::new();
    let mut overflow_pending: Vec<Row> = Vec::new();
    let mut ejections: Vec<Row> = Vec::new();
    let mut ejected: Vec<Row> = Vec::new();
    let mut in_flight: Vec<Row> = Vec::new();
    for name in mesh.cluster_names() {
        let n = name.as_str().to_owned();
        if let Some((r, f)) = mesh.retry_counts(name.as_str()) {
            retries.push((n.clone(), r));
            refused.push((n.clone(), f));
        }
        if let Some(s) = mesh.cluster_stats(name.as_str()) {
            overflow.push((n.clone(), s.overflow_requests));
            overflow_pending.push((n.clone(), s.overflow_pending));
            ejections.push((n.clone(), s.ejections_total));
            ejected.push((n.clone(), u64::from(s.ejected)));
            in_flight.push((n, s.requests_in_flight));
        }
    }
    per_cluster(
        out,
        "mesh_cluster_retries_total",
        "counter",
        "Retries granted.",
        &retries,
    );
    per_cluster(
        out,
        "mesh_cluster_retries_refused_total",
        "counter",
        "Retries refused by the retry budget or maxRetries.",
        &refused,
    );
    per_cluster(
        out,
        "mesh_cluster_circuit_breaker_overflow_total",
        "counter",
        "Requests refused by the circuit breaker's request limit.",
        &overflow,
    );
    per_cluster(
        out,
        "mesh_cluster_circuit_breaker_pending_overflow_total",
        "counter",
        "Requests refused by the circuit breaker's pending limit.",
        &overflow_pending,
    );
    per_cluster(
        out,
        "mesh_cluster_ejections_total",
        "counter",
        "Endpoints ejected by outlier detection.",
        &ejections,
    );
    per_cluster(
        out,
        "mesh_cluster_ejected_endpoints",
        "gauge",
        "Endpoints ejected now.",
        &ejected,
    );
    per_cluster(
        out,
        "mesh_cluster_requests_in_flight",
        "gauge",
        "Requests admitted by the circuit breaker and not finished.",
        &in_flight,
    );
    let m = mesh.mirror_stats();
    for (name, v) in [
        ("queued", m.queued()),
        ("dropped", m.dropped()),
        ("skipped", m.skipped()),
        ("completed", m.completed()),
        ("failed", m.failed()),
    ] {
        let _ = writeln!(out, "# TYPE mesh_mirror_{name}_total counter");
        let _ = writeln!(out, "mesh_mirror_{name}_total {v}");
    }
}
