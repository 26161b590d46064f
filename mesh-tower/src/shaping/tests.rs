#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mesh_core::model::{ForwardAction, PathMatch, Regex, Route, RouteAction, RouteMatch};

use super::*;

fn route(paths: Vec<PathMatch>) -> Route {
    Route {
        name: None,
        matches: paths.into_iter().map(RouteMatch::path).collect(),
        action: RouteAction::Forward(Box::new(ForwardAction::to("c"))),
    }
}

fn rewrite(r: &Route, url: &str, to: &str) -> String {
    let req = Request::get(url).body(()).unwrap();
    rewritten_path(r, &req, to).unwrap().to_string()
}

#[test]
fn uri_rewrite_replaces_the_matched_prefix_and_keeps_the_query() {
    let r = route(vec![
        PathMatch::Exact("/exact".into()),
        PathMatch::Prefix("/old".into()),
    ]);
    assert_eq!(rewrite(&r, "http://a/old/x?q=1", "/new"), "/new/x?q=1");
    assert_eq!(rewrite(&r, "http://a/oldies", "/new"), "/newies");
    // An exact match is replaced whole.
    assert_eq!(rewrite(&r, "http://a/exact?q=2", "/v2/e"), "/v2/e?q=2");
    let r = route(vec![PathMatch::Regex(
        Regex::try_new("/r/.*", false).unwrap(),
    )]);
    assert_eq!(rewrite(&r, "http://a/r/1", "/whole"), "/whole");
    // No path condition: Envoy's implicit prefix "/".
    let r = route(vec![]);
    assert_eq!(rewrite(&r, "http://a/x/y", "/api/"), "/api/x/y");
    assert_eq!(rewrite(&r, "http://a/", ""), "/");
}

#[test]
fn header_edits_remove_then_set_then_add() {
    use http::{HeaderName, HeaderValue};
    let m = mesh_core::model::HeaderMutations {
        set: Arc::from([(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("set"),
        )]),
        add: Arc::from([(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("added"),
        )]),
        remove: Arc::from([
            HeaderName::from_static("x-gone"),
            HeaderName::from_static("x-a"),
        ]),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("old"));
    headers.insert("x-gone", HeaderValue::from_static("1"));
    future::mutate(&mut headers, &m);
    let values: Vec<_> = headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["set", "added"]);
    assert!(!headers.contains_key("x-gone"));
}

#[tokio::test]
async fn static_policies_apply_without_a_route_decision() {
    use http::{HeaderName, HeaderValue};
    use tower::{Service, ServiceExt};
    let policy = StaticShaping {
        rewrite: Some(mesh_core::model::Rewrite {
            path_prefix: Some("/v2/".into()),
            authority: None,
        }),
        request_headers: mesh_core::model::HeaderMutations {
            set: Arc::from([(
                HeaderName::from_static("x-req"),
                HeaderValue::from_static("1"),
            )]),
            ..Default::default()
        },
        response_headers: mesh_core::model::HeaderMutations {
            set: Arc::from([(
                HeaderName::from_static("x-res"),
                HeaderValue::from_static("2"),
            )]),
            ..Default::default()
        },
    };
    let mut svc = Shaping::with_static(
        tower::service_fn(|req: Request<http_body_util::Empty<Bytes>>| async move {
            let mut res = Response::new(crate::ResponseBody::empty());
            res.headers_mut()
                .insert("x-seen-req", req.headers()["x-req"].clone());
            res.headers_mut().insert(
                "x-seen-path",
                HeaderValue::from_str(req.uri().path()).unwrap(),
            );
            Ok::<_, std::convert::Infallible>(res)
        }),
        policy,
    );
    let req = Request::get("http://a/items/1")
        .body(http_body_util::Empty::new())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.headers()["x-seen-req"], "1");
    assert_eq!(res.headers()["x-seen-path"], "/v2/items/1");
    assert_eq!(res.headers()["x-res"], "2");
}
