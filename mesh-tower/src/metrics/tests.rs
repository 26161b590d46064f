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
        peer: Default::default(),
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
    let c = SeriesTable::new(Some(ClusterName::new(
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    )));
    for _ in 0..3 {
        c.record(&record(None, 200, 7));
    }
    c.record(&record(None, 503, 30));
    m.unrouted().record(&Record {
        flag: ResponseFlag::NoRoute,
        ..record(None, 404, 0)
    });
    m.inbound().record(&Record {
        reporter: Reporter::Destination,
        grpc_status: Some(14),
        protocol: Protocol::Grpc,
        ..record(None, 200, 1)
    });
    assert_eq!(c.requests_total(200), 3);
    assert_eq!(c.requests_total(503), 1);
    let mut text = String::new();
    m.render([&c], &mut text);
    let labels = "reporter=\"source\",source_workload=\"productpage-v1\",source_principal=\"unknown\",destination_workload=\"unknown\",destination_principal=\"unknown\",destination_service=\"reviews.default.svc.cluster.local\",connection_security_policy=\"unknown\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",request_protocol=\"http\"";
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
    assert!(text.contains("destination_service=\"unknown\",connection_security_policy=\"unknown\",response_code=\"404\",grpc_response_status=\"\",response_flags=\"NR\""));
    assert!(text.contains("istio_requests_total{reporter=\"destination\",source_workload=\"unknown\",source_principal=\"unknown\",destination_workload=\"productpage-v1\",destination_principal=\"unknown\",destination_service=\"unknown\",connection_security_policy=\"none\",response_code=\"200\",grpc_response_status=\"14\",response_flags=\"-\",request_protocol=\"grpc\"} 1\n"), "{text}");
    assert!(text.contains("# TYPE istio_request_bytes histogram\n"));
}

#[test]
fn keys_round_trip_through_their_packing() {
    for flag in FLAGS {
        for (code, grpc, protocol) in [
            (0, None, Protocol::Http),
            (599, Some(0), Protocol::Grpc),
            (200, Some(16), Protocol::Http),
        ] {
            for peer in [
                Peer::default(),
                Peer {
                    mutual_tls: true,
                    principal: 15,
                },
            ] {
                let k = Key {
                    code,
                    grpc_status: grpc,
                    flag,
                    protocol,
                    peer,
                };
                assert_eq!(Key::unpack(k.pack()), Some(k));
            }
        }
    }
    assert_eq!(Key::unpack(0), None);
}

#[test]
fn a_full_table_counts_what_it_drops() {
    let m = IstioMetrics::new("");
    assert_eq!(m.workload(), "unknown");
    let t = m.unrouted();
    for code in 0..(SLOTS as u16 + 5) {
        t.record(&record(None, 200 + code, 1));
        t.record(&record(None, 200 + code, 1));
    }
    let recorded: u64 = (0..(SLOTS as u16 + 5))
        .map(|c| t.requests_total(200 + c))
        .sum();
    assert_eq!(recorded, 2 * SLOTS as u64);
    assert_eq!(t.dropped(), 10);
    let mut text = String::new();
    m.render([], &mut text);
    assert!(
        text.contains("mesh_metrics_series_dropped_total 10\n"),
        "{text}"
    );
}

fn mtls_from(id: &str) -> crate::serve::ConnectionSecurity {
    crate::serve::ConnectionSecurity::new(
        crate::serve::SecurityMode::MutualTls,
        Some(id.parse().unwrap()),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    )
}

#[test]
fn peer_principals_are_interned_and_bounded() {
    let m = IstioMetrics::new("reviews");
    let a = m.peer(Some(&mtls_from("spiffe://cluster.local/ns/default/sa/a")));
    let b = m.peer(Some(&mtls_from("spiffe://cluster.local/ns/default/sa/b")));
    assert!(a.is_mutual_tls());
    assert_ne!(a, b);
    assert_eq!(
        a,
        m.peer(Some(&mtls_from("spiffe://cluster.local/ns/default/sa/a")))
    );
    assert_eq!(
        m.peer_principal(a),
        Some("spiffe://cluster.local/ns/default/sa/a")
    );
    assert_eq!(m.peer(None), Peer::default());
    for i in 0..PRINCIPALS {
        m.peer(Some(&mtls_from(&format!(
            "spiffe://cluster.local/ns/x/sa/{i}"
        ))));
    }
    let over = m.peer(Some(&mtls_from("spiffe://cluster.local/ns/x/sa/last")));
    assert_eq!(m.peer_principal(over), None);
    assert!(over.is_mutual_tls());
    m.record_inbound(&Record {
        reporter: Reporter::Destination,
        peer: a,
        ..record(None, 200, 1)
    });
    let mut text = String::new();
    m.render([], &mut text);
    assert!(text.contains("istio_requests_total{reporter=\"destination\",source_workload=\"unknown\",source_principal=\"spiffe://cluster.local/ns/default/sa/a\",destination_workload=\"reviews\",destination_principal=\"unknown\",destination_service=\"unknown\",connection_security_policy=\"mutual_tls\",response_code=\"200\""), "{text}");
    // 17 distinct principals: 15 interned, the 16th and 17th overflow.
    assert!(
        text.contains("mesh_metrics_principals_overflow_total 3\n"),
        "{text}"
    );
}

#[test]
fn tcp_connections_are_counted_open_and_closed() {
    let m = Arc::new(IstioMetrics::new("reviews"));
    let peer = m.peer(Some(&mtls_from("spiffe://cluster.local/ns/default/sa/a")));
    let first = m.accepted(peer);
    let second = m.accepted(Peer::default());
    drop(first);
    assert_eq!(m.inbound_tcp(true), (1, 1));
    assert_eq!(m.inbound_tcp(false), (1, 0));
    let c = Arc::new(SeriesTable::new(Some(ClusterName::new(
        "outbound|9080||ratings.default.svc.cluster.local",
    ))));
    drop(TcpCounters::open(&c));
    let mut text = String::new();
    m.render([&*c], &mut text);
    drop(second);
    assert!(text.contains("istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"unknown\",source_principal=\"spiffe://cluster.local/ns/default/sa/a\",destination_workload=\"reviews\",destination_principal=\"unknown\",destination_service=\"unknown\",connection_security_policy=\"mutual_tls\"} 1\n"), "{text}");
    assert!(text.contains("istio_tcp_connections_closed_total{reporter=\"destination\",source_workload=\"unknown\",source_principal=\"unknown\",destination_workload=\"reviews\",destination_principal=\"unknown\",destination_service=\"unknown\",connection_security_policy=\"none\"} 0\n"), "{text}");
    assert!(text.contains("istio_tcp_connections_closed_total{reporter=\"source\",source_workload=\"reviews\",source_principal=\"unknown\",destination_workload=\"unknown\",destination_principal=\"unknown\",destination_service=\"ratings.default.svc.cluster.local\",connection_security_policy=\"unknown\"} 1\n"), "{text}");
}
