use super::codec::{parse_b3_single, parse_traceparent};
use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
const SPAN: u64 = 0x00f067aa0ba902b7;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn traceparent_follows_the_w3c_grammar() {
    // The example of W3C Trace Context §3.2.2.
    let s = parse_traceparent(TP.as_bytes()).unwrap();
    assert_eq!(s.trace_id.get(), TRACE);
    assert_eq!(s.span_id.get(), SPAN);
    assert!(s.sampled);
    let unsampled = TP.replace("-01", "-00");
    assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
    // A later version may append fields after a dash (§3.2.4).
    let future = TP.replace("00-", "01-") + "-extra";
    assert!(parse_traceparent(future.as_bytes()).is_some());
    for bad in [
        "",
        "garbage",
        &TP.to_uppercase(),
        &TP.replace("00-4b", "ff-4b"),
        &(TP.to_owned() + "-extra"),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
    ] {
        assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
    }
}

#[test]
fn b3_single_follows_the_b3_spec() {
    // Examples of openzipkin/b3-propagation "Single Header".
    let s =
        parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
            .unwrap();
    assert_eq!(s.trace_id.get(), 0x80f198ee56343ba864fe8b2a57d3eff7);
    assert_eq!(s.span_id.get(), 0xe457b5a2e4d86bd1);
    assert_eq!(s.parent_span_id.unwrap().get(), 0x05e3ac9a4f6e3b90);
    assert!(s.sampled);
    // A 64-bit trace id is left-padded; `d` (debug) means sampled.
    let s = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d").unwrap();
    assert_eq!(s.trace_id.get(), 0x64fe8b2a57d3eff7);
    assert!(s.sampled);
    assert!(
        !parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")
            .unwrap()
            .sampled
    );
    for bad in [
        "0",
        "1",
        "d",
        "abc-def",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
        "64fe8b2a57d3eff7",
    ] {
        assert_eq!(parse_b3_single(bad.as_bytes()), None, "{bad:?}");
    }
}

#[test]
fn extraction_prefers_w3c_then_b3_and_skips_malformed_formats() {
    let b3_multi = [
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "0"),
    ];
    let mut both = b3_multi.to_vec();
    both.push(("traceparent", TP));
    let cx = codec::extract(&headers(&both), Propagators::default()).unwrap();
    assert_eq!(cx.span.trace_id.get(), TRACE, "W3C first");

    // A malformed traceparent falls through to a valid B3 context.
    let mut bad_w3c = b3_multi.to_vec();
    bad_w3c.push(("traceparent", "00-zz"));
    let cx = codec::extract(&headers(&bad_w3c), Propagators::default()).unwrap();
    assert_eq!(cx.span.trace_id.get(), 0x80f198ee56343ba864fe8b2a57d3eff7);
    assert_eq!(cx.span.span_id.get(), 0xe457b5a2e4d86bd1);
    assert!(!cx.span.sampled);

    // A format that is off is not read.
    let only_w3c = Propagators::none().with_tracecontext();
    assert_eq!(codec::extract(&headers(&b3_multi), only_w3c), None);
    // B3 debug implies sampled.
    let mut debug = b3_multi.to_vec();
    debug.push(("x-b3-flags", "1"));
    assert!(
        codec::extract(&headers(&debug), Propagators::default())
            .unwrap()
            .span
            .sampled
    );
    // Two traceparents are invalid (§3.2.2).
    let two = headers(&[("traceparent", TP), ("traceparent", TP)]);
    assert_eq!(codec::extract(&two, only_w3c), None);
}

#[test]
fn tracestate_and_baggage_are_kept_only_when_valid() {
    let ok = headers(&[
        ("traceparent", TP),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("baggage", "userId=alice,isProduction=false"),
    ]);
    let cx = codec::extract(&ok, Propagators::default()).unwrap();
    assert_eq!(
        cx.tracestate.unwrap(),
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );
    assert_eq!(cx.baggage.unwrap(), "userId=alice,isProduction=false");

    let long = "a=".to_owned() + &"b".repeat(600);
    let many = vec!["k=v"; 33].join(",");
    for bad in [long.as_str(), many.as_str()] {
        let h = headers(&[("traceparent", TP), ("tracestate", bad)]);
        assert_eq!(
            codec::extract(&h, Propagators::default())
                .unwrap()
                .tracestate,
            None
        );
    }
    // tracestate without a valid traceparent is meaningless (§3.3.1).
    let h = headers(&[
        ("traceparent", "00-bad"),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    assert_eq!(codec::extract(&h, Propagators::default()), None);
}

#[tokio::test]
async fn outbound_calls_are_children_of_the_current_span_and_attempts_of_the_call() {
    let server = server_context(
        &headers(&[("traceparent", TP), ("x-request-id", "ignored")]),
        Propagators::default(),
        Sampling::never(),
        &HeaderValue::from_static("req-1"),
    )
    .expect("a valid parent is continued without sampling");
    assert_eq!(server.span.trace_id.get(), TRACE);
    assert_eq!(server.span.parent_span_id.unwrap().get(), SPAN);
    assert_ne!(server.span.span_id.get(), SPAN);

    let server_span = server.span;
    let (call, out) = scope(Some(server), async {
        // A stale trace header on the request is replaced, not forwarded.
        let mut h = headers(&[("traceparent", "00-bad"), ("b3", "1")]);
        let call = outbound(&mut h, Propagators::all(), Sampling::never()).unwrap();
        (call, h)
    })
    .await;
    assert_eq!(call.trace_id, server_span.trace_id);
    assert_eq!(call.parent_span_id, Some(server_span.span_id));
    assert_eq!(
        out["x-request-id"], "req-1",
        "the request id follows the trace"
    );
    assert_eq!(
        out["traceparent"].to_str().unwrap(),
        format!("00-{}-{}-01", call.trace_id, call.span_id)
    );
    assert_eq!(
        out["b3"].to_str().unwrap(),
        format!(
            "{}-{}-1-{}",
            call.trace_id, call.span_id, server_span.span_id
        )
    );

    let mut first = out.clone();
    let mut second = out.clone();
    let a1 = attempt(&mut first).unwrap();
    let a2 = attempt(&mut second).unwrap();
    assert_ne!(a1.span_id, a2.span_id);
    for (a, h) in [(a1, &first), (a2, &second)] {
        assert_eq!(a.trace_id, call.trace_id);
        assert_eq!(a.parent_span_id, Some(call.span_id));
        let sent = parse_traceparent(h["traceparent"].as_bytes()).unwrap();
        assert_eq!(sent.span_id, a.span_id);
        assert_eq!(h["x-b3-spanid"].to_str().unwrap(), a.span_id.to_string());
        assert_eq!(
            h["x-b3-parentspanid"].to_str().unwrap(),
            call.span_id.to_string()
        );
        assert_eq!(
            parse_b3_single(h["b3"].as_bytes()).unwrap().parent_span_id,
            Some(call.span_id)
        );
    }
}

#[tokio::test]
async fn outside_a_server_a_call_joins_the_requests_headers_or_starts_a_sampled_trace() {
    let mut h = headers(&[("traceparent", TP)]);
    let call = outbound(&mut h, Propagators::default(), Sampling::never()).unwrap();
    assert_eq!(call.trace_id.get(), TRACE);
    assert_eq!(call.parent_span_id.unwrap().get(), SPAN);
    assert_eq!(h["x-request-id"].len(), 36, "generated when absent");

    let mut h = HeaderMap::new();
    let root = outbound(&mut h, Propagators::none(), Sampling::always()).unwrap();
    assert_eq!(root.parent_span_id, None);
    assert!(root.sampled);
    assert!(
        !h.contains_key("traceparent"),
        "no format: only the request id"
    );
    assert!(h.contains_key("x-request-id"));
    assert_eq!(attempt(&mut h), None);
}

#[tokio::test]
async fn an_untraced_call_is_left_alone_unless_sampled() {
    let mut h = headers(&[("x-request-id", "app-id")]);
    assert_eq!(
        outbound(&mut h, Propagators::all(), Sampling::never()),
        None
    );
    assert_eq!(h.len(), 1, "no header written: {h:?}");
    assert_eq!(h["x-request-id"], "app-id");
    // Inside a server's scope without a trace (an untraced request), too.
    let (call, h) = scope(None, async {
        let mut h = HeaderMap::new();
        (outbound(&mut h, Propagators::all(), Sampling::never()), h)
    })
    .await;
    assert_eq!(call, None);
    assert!(h.is_empty());
    // A malformed header is not a trace: ignored, and not forwarded.
    let mut h = headers(&[("traceparent", "00-bad"), ("tracestate", "a=b")]);
    assert_eq!(
        outbound(&mut h, Propagators::default(), Sampling::never()),
        None
    );
    assert!(h.is_empty(), "{h:?}");
    // The server side: no context, nothing to scope.
    assert_eq!(
        server_context(
            &HeaderMap::new(),
            Propagators::default(),
            Sampling::never(),
            &HeaderValue::from_static("id"),
        ),
        None
    );
    let started = server_context(
        &headers(&[("traceparent", "00-bad")]),
        Propagators::default(),
        Sampling::always(),
        &HeaderValue::from_static("id"),
    )
    .expect("sampled");
    assert_eq!(started.span.parent_span_id, None, "a new trace");
}

#[test]
fn sampling_ratio_is_bounded_and_roughly_right() {
    assert!(Sampling::percentage(0.0).is_never());
    assert!(Sampling::percentage(f64::NAN).is_never());
    assert_eq!(Sampling::percentage(100.0), Sampling::always());
    assert_eq!(Sampling::percentage(250.0), Sampling::always());
    assert!((0..1000).all(|_| Sampling::always().sample()));
    assert!((0..1000).all(|_| !Sampling::never().sample()));
    fastrand::seed(7);
    let hits = (0..100_000)
        .filter(|_| Sampling::percentage(10.0).sample())
        .count();
    // 10% of 100k with a fixed seed: the binomial sd is ~95.
    assert!((9_000..11_000).contains(&hits), "{hits}");
}

#[tokio::test]
async fn inherit_carries_the_trace_and_deadline_into_spawned_tasks() {
    let cx = TraceContext::new(SpanContext::new_root());
    let span = cx.span;
    let seen = scope(Some(cx), async {
        tokio::spawn(inherit(async { current_span() }))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(seen, Some(span));
    let lost = scope(Some(TraceContext::new(span)), async {
        tokio::spawn(async { current_span() }).await.unwrap()
    })
    .await;
    assert_eq!(
        lost, None,
        "without inherit a spawned task is outside the trace"
    );
}
