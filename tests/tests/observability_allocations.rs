//! Recording Istio's metrics and propagating trace context must not touch
//! the heap for an untraced request, and a traced one only for the header
//! values written. Counted with an
//! instrumented global allocator in a binary of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use mesh_core::ClusterName;
use mesh_tower::metrics::{IstioMetrics, Protocol, Record, Reporter, ResponseFlag, SeriesTable};
use mesh_tower::trace::{self, SpanContext, TraceContext};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn record(code: u16) -> Record<'static> {
    Record {
        reporter: Reporter::Source,
        destination: None,
        code,
        grpc_status: None,
        flag: ResponseFlag::None,
        protocol: Protocol::Http,
        duration: Duration::from_micros(1500),
        request_bytes: 10,
        response_bytes: 100,
        peer: Default::default(),
    }
}

/// One test: the allocator's counts are global, so a second test running
/// on another thread would be counted too.
#[test]
fn telemetry_allocates_nothing_untraced_and_only_header_values_traced() {
    metric_recording_does_not_allocate_even_for_new_series();
    untraced_requests_allocate_nothing();
    trace_injection_allocates_only_the_header_values_it_writes();
    whole_stack::unsampled_requests_allocate_as_much_as_with_telemetry_off();
}

/// Runs `measure` (which builds its own fresh state and returns the
/// allocations of its measured region) up to three times and returns the
/// first count that is zero, else the last. The allocator counts every
/// thread of the process, and the test harness's own threads allocate now
/// and then (about one run in 40 on a loaded machine saw 4 foreign
/// allocations); code that allocates does so on every attempt, so retrying
/// with fresh state hides noise, never a regression.
fn fewest_allocations(mut measure: impl FnMut() -> stats_alloc::Stats) -> stats_alloc::Stats {
    let mut last = measure();
    for _ in 0..2 {
        if (last.allocations, last.reallocations) == (0, 0) {
            break;
        }
        last = measure();
    }
    last
}

fn metric_recording_does_not_allocate_even_for_new_series() {
    let change = fewest_allocations(record_into_fresh_series);
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "recording allocated ({change:?})"
    );
}

fn record_into_fresh_series() -> stats_alloc::Stats {
    let metrics = IstioMetrics::new("productpage");
    let tables: Vec<SeriesTable> = (0..20)
        .map(|i| {
            SeriesTable::new(Some(ClusterName::new(format!(
                "outbound|9080||svc{i}.default.svc.cluster.local"
            ))))
        })
        .collect();
    let region = Region::new(GLOBAL);
    for _ in 0..100 {
        for t in &tables {
            for code in [200, 404, 503] {
                t.record(&record(code));
            }
        }
        metrics.inbound().record(&record(200));
        metrics.unrouted().record(&record(404));
    }
    let change = region.change();
    assert_eq!(
        tables.iter().map(|t| t.requests_total(503)).sum::<u64>(),
        2000
    );
    assert_eq!(metrics.inbound().requests_total(200), 100);
    change
}

fn untraced_requests_allocate_nothing() {
    let change = fewest_allocations(untraced_requests);
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "untraced propagation allocated ({change:?})"
    );
}

fn untraced_requests() -> stats_alloc::Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = HeaderValue::from_static("req-1");
    let mut headers = HeaderMap::with_capacity(16);
    headers.insert("x-request-id", id.clone());
    let p = trace::Propagators::all();
    let never = trace::Sampling::never();
    let region = Region::new(GLOBAL);
    for _ in 0..100 {
        // A server request without a trace context, and the calls its
        // handler makes (the task-local is set, to `None`).
        let cx = trace::server_context(&headers, p, never, &id);
        assert!(cx.is_none());
        rt.block_on(trace::scope(cx, async {
            assert!(trace::outbound(&mut headers, p, never).is_none());
            assert!(trace::attempt(&mut headers).is_none());
        }));
        // A call outside any server.
        assert!(trace::outbound(&mut headers, p, never).is_none());
    }
    let change = region.change();
    assert_eq!(headers.len(), 1, "nothing injected: {headers:?}");
    change
}

fn trace_injection_allocates_only_the_header_values_it_writes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let never = trace::Sampling::never();
    rt.block_on(trace::scope(
        Some(TraceContext {
            request_id: Some(HeaderValue::from_static("req-1")),
            ..TraceContext::new(SpanContext::new_root())
        }),
        async {
            // Room for every header up front, as a request that already
            // has its headers would have.
            // The fewest of three tries, for the reason given at
            // `fewest_allocations`.
            let (mut call, mut attempt) = (usize::MAX, usize::MAX);
            for _ in 0..3 {
                let mut headers = HeaderMap::with_capacity(16);
                trace::outbound(&mut headers, trace::Propagators::default(), never);
                trace::attempt(&mut headers);
                let region = Region::new(GLOBAL);
                let c = trace::outbound(&mut headers, trace::Propagators::default(), never);
                std::hint::black_box(c);
                call = call.min(region.change().allocations);
                let region = Region::new(GLOBAL);
                std::hint::black_box(trace::attempt(&mut headers));
                attempt = attempt.min(region.change().allocations);
            }
            // traceparent, x-b3-traceid, x-b3-spanid, x-b3-parentspanid:
            // one `Bytes` each (x-b3-sampled and the request id are static
            // or shared).
            assert!(call <= 4, "{call} allocations");
            // traceparent, x-b3-spanid, x-b3-parentspanid.
            assert!(attempt <= 3, "{attempt} allocations");
        },
    ));
}

/// The whole telemetry of a request (trace propagation, span recording
/// set up, Istio metrics on both sides; access log off) through a mesh
/// client and a mesh server over loopback HTTP/2, against the same client
/// and server without it: an unsampled request must cost no allocation
/// more.
mod whole_stack {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use mesh_tower::trace::{self, OtlpExporter, Propagators, Sampling, SpanContext};
    use mesh_tower::{Mesh, MeshClient, MeshServerLayer};
    use stats_alloc::Region;
    use tower::{Layer, ServiceExt};

    use super::GLOBAL;

    /// An exporter that keeps nothing; its batches are never due while the
    /// test measures (the delay is long and the batch larger than the
    /// spans of a run).
    #[derive(Debug)]
    struct Discard;

    impl opentelemetry_sdk::trace::SpanExporter for Discard {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            drop(batch);
            Ok(())
        }
    }

    /// A mesh client whose requests reach a mesh server on this runtime,
    /// and whether the server's handler ran inside a trace.
    struct Stack {
        client: MeshClient,
        server_traced: Arc<AtomicBool>,
        _mesh: Mesh,
    }

    async fn serve(layer: MeshServerLayer, traced: Arc<AtomicBool>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = layer.layer(tower::service_fn(move |_req: Request<Incoming>| {
            let traced = Arc::clone(&traced);
            async move {
                // Inside the server layer's task-local scope.
                traced.store(trace::current_span().is_some(), Ordering::Relaxed);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        }));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    impl Stack {
        /// With `sampling`, both sides have every telemetry layer; without,
        /// neither has any (the client's metrics, which cannot be turned
        /// off, excepted).
        async fn new(sampling: Option<Sampling>) -> Self {
            let store = mesh_core::ConfigStore::new();
            let builder = Mesh::builder(store.clone());
            let mesh = match sampling {
                Some(_) => builder
                    .with_span_exporter(
                        OtlpExporter::builder()
                            .with_delay(Duration::from_secs(3600))
                            .with_batch(4096)
                            .with_queue(4096)
                            .build_with(Discard),
                    )
                    .build(),
                None => builder.build(),
            };
            let layer = match sampling {
                Some(s) => mesh.server_layer().with_sampling(s),
                None => MeshServerLayer::new().with_propagators(Propagators::none()),
            };
            let server_traced = Arc::new(AtomicBool::new(false));
            let addr = serve(layer, Arc::clone(&server_traced)).await;
            let version = mesh_examples::publish_yaml(
                &store,
                &mesh_examples::yaml::service_entry("bench", 8080, "HTTP2", &[(addr, "v1")]),
            );
            mesh.applied(version).await;
            let client = match sampling {
                Some(s) => mesh.client().with_sampling(s),
                None => mesh.client().with_propagators(Propagators::none()),
            };
            Self {
                client,
                server_traced,
                _mesh: mesh,
            }
        }

        /// Sends one request; whether either side traced it.
        async fn request(&self) -> bool {
            let req = Request::get("http://bench:8080/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = self.client.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200);
            let client_traced = res.extensions().get::<SpanContext>().is_some();
            res.into_body().collect().await.unwrap();
            client_traced || self.server_traced.load(Ordering::Relaxed)
        }
    }

    /// Allocations of each of `n` requests, after a warm-up, and whether
    /// the request was traced.
    fn per_request(sampling: Option<Sampling>, n: usize) -> Vec<(u64, bool)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stack = Stack::new(sampling).await;
            for _ in 0..100 {
                stack.request().await;
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let region = Region::new(GLOBAL);
                let traced = stack.request().await;
                out.push((region.change().allocations as u64, traced));
            }
            out
        })
    }

    /// The count most requests of `counts` allocate, and how many do.
    fn typical(counts: impl Iterator<Item = u64>) -> (u64, usize) {
        let mut seen = std::collections::BTreeMap::new();
        for c in counts {
            *seen.entry(c).or_insert(0usize) += 1;
        }
        seen.into_iter()
            .map(|(c, n)| (n, c))
            .max()
            .map(|(n, c)| (c, n))
            .unwrap_or_default()
    }

    /// Per request, not in total: a request's count is the same every time
    /// (26 in a debug build: the client, hyper, h2 and the server), but
    /// every few dozen requests the connection does work of its own (the
    /// HPACK table wraps as the server's unique `x-request-id`s fill it;
    /// buffers grow), a couple of allocations more, and the phase of that
    /// differs between two runs; the harness's threads also allocate now
    /// and then. So each variant's typical request (at least nine in ten
    /// requests) must allocate exactly what the typical request of the
    /// stack without telemetry does.
    pub(super) fn unsampled_requests_allocate_as_much_as_with_telemetry_off() {
        const N: usize = 300;
        let off = per_request(None, N);
        assert!(off.iter().all(|(_, traced)| !traced), "nothing traced");
        let (count, n) = typical(off.iter().map(|(a, _)| *a));
        assert!(n >= N * 9 / 10, "off: {n} of {N} requests at {count}");

        let zero = per_request(Some(Sampling::never()), N);
        assert!(zero.iter().all(|(_, traced)| !traced), "0%: nothing traced");
        let (zero_count, n) = typical(zero.iter().map(|(a, _)| *a));
        assert!(n >= N * 9 / 10, "0%: {n} of {N} requests at {zero_count}");
        assert_eq!(
            zero_count, count,
            "an unsampled request with the whole telemetry allocates as much as one without"
        );

        // 1% on both sides (the server also samples requests that arrive
        // without a trace): the traced requests allocate, the others not.
        let one = per_request(Some(Sampling::percentage(1.0)), 2 * N);
        let traced: Vec<u64> = one.iter().filter(|(_, t)| *t).map(|(a, _)| *a).collect();
        let unsampled = one.iter().filter(|(_, t)| !t).map(|(a, _)| *a);
        let (one_count, n) = typical(unsampled);
        assert!(
            n >= (2 * N - traced.len()) * 9 / 10,
            "1%: {n} unsampled requests at {one_count}"
        );
        assert_eq!(
            one_count, count,
            "an unsampled request at 1% allocates as much as one without telemetry"
        );
        // The sampled ones do record (spans, header values), so they are
        // told apart correctly.
        assert!(
            traced.iter().all(|&a| a > count),
            "traced requests allocate for their spans: {traced:?} against {count}"
        );
    }
}
