//! The Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::{BUCKETS, Histogram, IstioMetrics, Key, Peer, Reporter, Series, SeriesTable};

/// What every series' labels share: the metrics and the process's own
/// principal, read once per scrape.
pub(super) struct Ctx<'a> {
    pub(super) m: &'a IstioMetrics,
    pub(super) own: &'a str,
}

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
pub(super) fn destination_service(cluster: Option<&str>) -> &str {
    match cluster {
        None => "unknown",
        Some(c) => c.rsplit('|').next().unwrap_or(c),
    }
}

/// The values of `source_workload`, `destination_workload`,
/// `source_principal`, `destination_principal` and
/// `connection_security_policy` of a series.
pub(super) fn peer_values<'a>(c: &Ctx<'a>, reporter: Reporter, peer: Peer) -> [&'a str; 5] {
    let m = c.m;
    match reporter {
        Reporter::Source => [&*m.workload, "unknown", c.own, "unknown", "unknown"],
        Reporter::Destination => [
            "unknown",
            &*m.workload,
            m.peer_principal(peer).unwrap_or("unknown"),
            c.own,
            if peer.mutual_tls {
                "mutual_tls"
            } else {
                "none"
            },
        ],
    }
}

/// The labels every Istio metric shares (`reporter` to
/// `destination_service`, and `connection_security_policy`).
fn peer_labels(
    out: &mut String,
    c: &Ctx<'_>,
    reporter: Reporter,
    peer: Peer,
    cluster: Option<&str>,
) {
    let [source, dest, source_principal, dest_principal, policy] = peer_values(c, reporter, peer);
    out.push_str("reporter=\"");
    out.push_str(reporter.as_str());
    out.push_str("\",source_workload=\"");
    label(out, source);
    out.push_str("\",source_principal=\"");
    label(out, source_principal);
    out.push_str("\",destination_workload=\"");
    label(out, dest);
    out.push_str("\",destination_principal=\"");
    label(out, dest_principal);
    out.push_str("\",destination_service=\"");
    label(out, destination_service(cluster));
    out.push_str("\",connection_security_policy=\"");
    out.push_str(policy);
    out.push('"');
}

fn labels(out: &mut String, c: &Ctx<'_>, row: &Row<'_>) {
    let (reporter, cluster, k, _) = row;
    peer_labels(out, c, *reporter, k.peer, *cluster);
    out.push(',');
    let _ = write!(out, "response_code=\"{}\"", k.code);
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
    m: &Ctx<'_>,
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

pub(super) fn istio(m: &Ctx<'_>, tables: &[(Reporter, &SeriesTable)], out: &mut String) {
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
    out.push_str("# HELP mesh_metrics_principals_overflow_total Requests whose peer principal was labelled unknown: the principal table was full.\n");
    out.push_str("# TYPE mesh_metrics_principals_overflow_total counter\n");
    let _ = writeln!(
        out,
        "mesh_metrics_principals_overflow_total {}",
        m.m.principals_overflow.load(Ordering::Relaxed)
    );
    tcp(m, tables, out);
}

/// `istio_tcp_connections_opened_total` and `_closed_total`: the client
/// side per destination table, the server side per peer.
fn tcp(c: &Ctx<'_>, tables: &[(Reporter, &SeriesTable)], out: &mut String) {
    for (name, help, pick) in [
        (
            "istio_tcp_connections_opened_total",
            "Total TCP connections opened.",
            super::TcpCounters::opened as fn(&super::TcpCounters) -> u64,
        ),
        (
            "istio_tcp_connections_closed_total",
            "Total TCP connections closed.",
            super::TcpCounters::closed,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (reporter, t) in tables {
            if *reporter != Reporter::Source || t.tcp().opened() == 0 {
                continue;
            }
            let _ = write!(out, "{name}{{");
            let cluster = t.destination().map(|c| c.as_str());
            peer_labels(out, c, Reporter::Source, Peer::default(), cluster);
            let _ = writeln!(out, "}} {}", pick(t.tcp()));
        }
        for (i, t) in c.m.inbound_tcp.iter().enumerate() {
            if t.opened() == 0 {
                continue;
            }
            let peer = Peer {
                mutual_tls: i % 2 == 1,
                principal: (i / 2) as u8,
            };
            let _ = write!(out, "{name}{{");
            peer_labels(out, c, Reporter::Destination, peer, None);
            let _ = writeln!(out, "}} {}", pick(t));
        }
    }
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
    // (cluster, health, count): healthy, unhealthy, draining, unknown.
    let mut endpoints: Vec<(String, &'static str, u64)> = Vec::new();
    for name in mesh.cluster_names() {
        if let Some(eps) = mesh.cluster_endpoints(name.as_str()) {
            let mut counts = [0u64; 4];
            for e in &eps {
                counts[match e.health {
                    mesh_core::model::Health::Healthy => 0,
                    mesh_core::model::Health::Unhealthy => 1,
                    mesh_core::model::Health::Draining => 2,
                    mesh_core::model::Health::Unknown => 3,
                }] += 1;
            }
            for (i, h) in ["healthy", "unhealthy", "draining", "unknown"]
                .into_iter()
                .enumerate()
            {
                endpoints.push((name.as_str().to_owned(), h, counts[i]));
            }
        }
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
    out.push_str("# HELP mesh_cluster_endpoints Endpoints of the cluster, by the health the config gives them (outlier ejection is mesh_cluster_ejected_endpoints).\n");
    out.push_str("# TYPE mesh_cluster_endpoints gauge\n");
    for (cluster, health, n) in &endpoints {
        out.push_str("mesh_cluster_endpoints{cluster=\"");
        label(out, cluster);
        let _ = writeln!(out, "\",health=\"{health}\"}} {n}");
    }
    out.push_str("# HELP mesh_config_updates_total Config updates offered to the store, by source and result (accepted or rejected).\n");
    out.push_str("# TYPE mesh_config_updates_total counter\n");
    for (source, c) in mesh.store().update_counts() {
        for (result, n) in [("accepted", c.accepted), ("rejected", c.rejected)] {
            out.push_str("mesh_config_updates_total{source=\"");
            label(out, source.as_str());
            let _ = writeln!(out, "\",result=\"{result}\"}} {n}");
        }
    }
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
    #[cfg(feature = "xds")]
    if let Some(xds) = mesh.xds() {
        super::xds::render(&xds.metrics(), out);
    }
}
