use super::*;

fn record<'a>(dest: Option<&'a ClusterName>, code: u16, ms: u64) -> Record<'a> {
    Record {
        reporter: Reporter::Source,
        destination: dest,
        code,
        grpc_status: None,
        flag: ResponseFlag::None,
        protocol: Protocol::Http,
        duration: Duration::from_millis(ms),
        request_bytes: 10,
        response_bytes: 2000,
    }
}

#[test]
fn istio_buckets_are_envoys_defaults() {
    // Envoy `HistogramSettingsImpl::defaultBuckets`, which Istio's
    // standard histograms use.
    assert_eq!(BUCKETS.first(), Some(&0.5));
    assert_eq!(BUCKETS.last(), Some(&3_600_000.0));
    assert_eq!(BUCKETS.len(), 19);
}

#[test]
fn series_are_found_again_and_rendered_with_istio_labels() {
    let m = IstioMetrics::new("productpage-v1");
    let c = ClusterName::new("outbound|9080|v1|reviews.default.svc.cluster.local");
    for _ in 0..3 {
        m.record(&record(Some(&c), 200, 7));
    }
    m.record(&record(Some(&c), 503, 30));
    m.record(&Record {
        flag: ResponseFlag::NoRoute,
        ..record(None, 404, 0)
    });
    assert_eq!(m.requests_total(Reporter::Source, 200), 3);
    assert_eq!(m.requests_total(Reporter::Source, 503), 1);
    let mut text = String::new();
    m.render(&mut text);
    let labels = "reporter=\"source\",source_workload=\"productpage-v1\",destination_workload=\"unknown\",destination_service=\"reviews.default.svc.cluster.local\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",request_protocol=\"http\"";
    assert!(
        text.contains(&format!("istio_requests_total{{{labels}}} 3\n")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_bucket{{{labels},le=\"5\"}} 0\n"
    )));
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_bucket{{{labels},le=\"10\"}} 3\n"
    )));
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} 3\n"
    )));
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_sum{{{labels}}} 21\n"
    )));
    assert!(text.contains(&format!(
        "istio_response_bytes_bucket{{{labels},le=\"2500\"}} 3\n"
    )));
    assert!(text.contains("destination_service=\"unknown\",response_code=\"404\",grpc_response_status=\"\",response_flags=\"NR\""));
    assert!(text.contains("# TYPE istio_request_bytes histogram\n"));
}

#[test]
fn a_full_table_counts_what_it_drops() {
    let m = IstioMetrics::new("");
    assert_eq!(m.workload(), "unknown");
    let names: Vec<ClusterName> = (0..MAX_SERIES + 5)
        .map(|i| ClusterName::new(format!("c{i}")))
        .collect();
    for n in &names {
        m.record(&record(Some(n), 200, 1));
    }
    assert_eq!(m.requests_total(Reporter::Source, 200), MAX_SERIES as u64);
    assert_eq!(m.dropped(), 5);
}
