//! Parsing and writing the trace header formats.
//!
//! Sources: W3C Trace Context Level 1 (`traceparent`, `tracestate`), W3C
//! Baggage, and openzipkin/b3-propagation (the `b3` single header and the
//! `x-b3-*` headers).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Propagators, REQUEST_ID, SpanContext, SpanId, TraceContext, TraceId};

/// W3C Trace Context `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// W3C `baggage`.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// The B3 single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3 multi: the trace id.
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi: the span id.
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi: the parent span id.
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi: the sampling decision.
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi: the debug flag (debug implies sampled).
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// W3C Trace Context §3.3.1.5: vendors must propagate at least 512
/// characters of `tracestate` and may drop it whole when longer.
const MAX_TRACESTATE: usize = 512;
/// W3C Trace Context §3.3.1.1: at most 32 list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// W3C Baggage §3.3.3 (limits): 8192 bytes and 180 list members.
const MAX_BAGGAGE: usize = 8192;
const MAX_BAGGAGE_MEMBERS: usize = 180;

/// Lower-case hex of exactly `N` digits (W3C and B3 both require lower
/// case; anything else is malformed).
fn hex<const N: usize>(s: &[u8]) -> Option<u128> {
    if s.len() != N {
        return None;
    }
    let mut n: u128 = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(d);
    }
    Some(n)
}

fn span_id(s: &[u8]) -> Option<SpanId> {
    // 16 hex digits always fit a u64.
    SpanId::new(u64::try_from(hex::<16>(s)?).ok()?)
}

/// A B3 trace id: 32 hex digits, or 16 (a 64-bit id, left-padded with
/// zeros as the B3 spec says 128-bit readers do).
fn b3_trace_id(s: &[u8]) -> Option<TraceId> {
    let n = match s.len() {
        32 => hex::<32>(s)?,
        16 => hex::<16>(s)?,
        _ => return None,
    };
    TraceId::new(n)
}

/// Parses a `traceparent` (W3C Trace Context §3.2).
pub(super) fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if v.len() < 55 {
        return None;
    }
    let version = hex::<2>(&v[0..2])?;
    // Version ff is invalid; version 00 is exactly 55 characters; a later
    // version may append fields after a dash (§3.2.4).
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::new(hex::<32>(&v[3..35])?)?;
    let span_id = span_id(&v[36..52])?;
    let flags = hex::<2>(&v[53..55])?;
    Some(SpanContext {
        trace_id,
        span_id,
        parent_span_id: None,
        sampled: flags & 1 == 1,
    })
}

/// Parses a `b3` single header: `{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`.
/// A bare sampling decision (`0`, `1`, `d`) carries no context and is
/// ignored. An absent sampling state (deferred) counts as sampled, the
/// decision this crate takes for new traces.
pub(super) fn parse_b3_single(v: &[u8]) -> Option<SpanContext> {
    let mut parts = v.split(|&b| b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => true,
        Some(b"1" | b"d") => true,
        Some(b"0") => false,
        Some(_) => return None,
    };
    let parent = match parts.next() {
        None => None,
        Some(p) => Some(span_id(p)?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id: span,
        parent_span_id: parent,
        sampled,
    })
}

/// Parses the `x-b3-*` headers. Debug (`x-b3-flags: 1`) implies sampled;
/// an absent `x-b3-sampled` is deferred and counts as sampled.
fn parse_b3_multi(h: &HeaderMap) -> Option<SpanContext> {
    let trace_id = b3_trace_id(h.get(B3_TRACE_ID)?.as_bytes())?;
    let span = span_id(h.get(B3_SPAN_ID)?.as_bytes())?;
    let debug = h.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match h.get(B3_SAMPLED).map(HeaderValue::as_bytes) {
        None => true,
        Some(b"1" | b"true") => true,
        Some(b"0" | b"false") => debug,
        Some(_) => return None,
    };
    let parent = match h.get(B3_PARENT_SPAN_ID) {
        None => None,
        Some(p) => Some(span_id(p.as_bytes())?),
    };
    Some(SpanContext {
        trace_id,
        span_id: span,
        parent_span_id: parent,
        sampled,
    })
}

/// A list header (`tracestate`, `baggage`) if it is one printable-ASCII
/// field within the limits; otherwise it is dropped whole.
fn checked_list(
    h: &HeaderMap,
    name: &HeaderName,
    max: usize,
    members: usize,
) -> Option<HeaderValue> {
    let mut all = h.get_all(name).iter();
    let v = all.next()?;
    // Several fields would have to be joined (an allocation); senders put
    // one, and a joined copy is not worth the cost here.
    if all.next().is_some() {
        return None;
    }
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= max
        && b.iter().all(|&c| (0x20..=0x7e).contains(&c))
        && b.iter().filter(|&&c| c == b',').count() < members;
    ok.then(|| v.clone())
}

/// The caller's context in `h`, in the first enabled format that is
/// valid (W3C, then B3 single, then B3 multi). Its span is the caller's
/// span (the parent of the receiver's).
pub(super) fn extract(h: &HeaderMap, p: Propagators) -> Option<TraceContext> {
    let mut tracestate = None;
    let span = None
        .or_else(|| {
            if !p.tracecontext() {
                return None;
            }
            // §3.2.2: one traceparent; several make it invalid.
            let mut all = h.get_all(TRACEPARENT).iter();
            let v = all.next()?;
            if all.next().is_some() {
                return None;
            }
            let span = parse_traceparent(v.as_bytes())?;
            tracestate = checked_list(h, &TRACESTATE, MAX_TRACESTATE, MAX_TRACESTATE_MEMBERS);
            Some(span)
        })
        .or_else(|| {
            p.b3_single()
                .then(|| h.get(B3))
                .flatten()
                .and_then(|v| parse_b3_single(v.as_bytes()))
        })
        .or_else(|| p.b3_multi().then(|| parse_b3_multi(h)).flatten())?;
    let baggage = p
        .baggage()
        .then(|| checked_list(h, &BAGGAGE, MAX_BAGGAGE, MAX_BAGGAGE_MEMBERS))
        .flatten();
    Some(TraceContext {
        span: SpanContext {
            parent_span_id: None,
            ..span
        },
        tracestate,
        baggage,
        request_id: None,
    })
}

/// Whether `h` has a trace header of any format.
pub(super) fn any_present(h: &HeaderMap) -> bool {
    [TRACEPARENT, TRACESTATE, B3, B3_TRACE_ID, B3_SPAN_ID]
        .iter()
        .any(|n| h.contains_key(n))
}

/// Removes the trace headers of every format (and `baggage` when that
/// propagator is on; otherwise it is the application's header), so that
/// only what [`inject`] writes is sent.
pub(super) fn clear(h: &mut HeaderMap, p: Propagators) {
    for name in [
        TRACEPARENT,
        TRACESTATE,
        B3,
        B3_TRACE_ID,
        B3_SPAN_ID,
        B3_PARENT_SPAN_ID,
        B3_SAMPLED,
        B3_FLAGS,
    ] {
        h.remove(name);
    }
    if p.baggage() {
        h.remove(BAGGAGE);
    }
}

fn put_hex(buf: &mut [u8], n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let len = buf.len();
    for (i, slot) in buf.iter_mut().enumerate() {
        *slot = HEX[((n >> (4 * (len - 1 - i))) & 0xf) as usize];
    }
}

fn value(b: &[u8]) -> HeaderValue {
    // Only hex digits, dashes and flags are written: always valid.
    HeaderValue::from_bytes(b).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn traceparent(s: &SpanContext) -> HeaderValue {
    let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut b[3..35], s.trace_id.get());
    put_hex(&mut b[36..52], u128::from(s.span_id.get()));
    b[54] = if s.sampled { b'1' } else { b'0' };
    value(&b)
}

fn b3_single(s: &SpanContext) -> HeaderValue {
    let mut b = *b"00000000000000000000000000000000-0000000000000000-0-0000000000000000";
    put_hex(&mut b[0..32], s.trace_id.get());
    put_hex(&mut b[33..49], u128::from(s.span_id.get()));
    b[50] = if s.sampled { b'1' } else { b'0' };
    match s.parent_span_id {
        Some(p) => {
            put_hex(&mut b[52..68], u128::from(p.get()));
            value(&b)
        }
        None => value(&b[..51]),
    }
}

fn id16(n: u64) -> HeaderValue {
    let mut b = [0u8; 16];
    put_hex(&mut b, u128::from(n));
    value(&b)
}

fn id32(n: u128) -> HeaderValue {
    let mut b = [0u8; 32];
    put_hex(&mut b, n);
    value(&b)
}

fn sampled(s: &SpanContext) -> HeaderValue {
    HeaderValue::from_static(if s.sampled { "1" } else { "0" })
}

/// Writes `cx` in the enabled formats, and its request id.
pub(super) fn inject(h: &mut HeaderMap, cx: &TraceContext, p: Propagators) {
    let s = &cx.span;
    if p.tracecontext() {
        h.insert(TRACEPARENT, traceparent(s));
        if let Some(ts) = &cx.tracestate {
            h.insert(TRACESTATE, ts.clone());
        }
    }
    if p.baggage()
        && let Some(b) = &cx.baggage
    {
        h.insert(BAGGAGE, b.clone());
    }
    if p.b3_single() {
        h.insert(B3, b3_single(s));
    }
    if p.b3_multi() {
        h.insert(B3_TRACE_ID, id32(s.trace_id.get()));
        h.insert(B3_SPAN_ID, id16(s.span_id.get()));
        if let Some(parent) = s.parent_span_id {
            h.insert(B3_PARENT_SPAN_ID, id16(parent.get()));
        }
        h.insert(B3_SAMPLED, sampled(s));
    }
    if let Some(id) = &cx.request_id {
        h.insert(REQUEST_ID, id.clone());
    }
}

/// See [`super::attempt`].
pub(super) fn attempt(h: &mut HeaderMap) -> Option<SpanContext> {
    let call = h
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
        .or_else(|| h.get(B3).and_then(|v| parse_b3_single(v.as_bytes())))
        .or_else(|| parse_b3_multi(h))?;
    let span = SpanContext {
        parent_span_id: None,
        ..call
    }
    .child();
    if h.contains_key(TRACEPARENT) {
        h.insert(TRACEPARENT, traceparent(&span));
    }
    if h.contains_key(B3) {
        h.insert(B3, b3_single(&span));
    }
    if h.contains_key(B3_SPAN_ID) {
        h.insert(B3_SPAN_ID, id16(span.span_id.get()));
        h.insert(B3_PARENT_SPAN_ID, id16(call.span_id.get()));
    }
    Some(span)
}
