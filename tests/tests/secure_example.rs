//! The security example (`cargo run -p mesh-examples --bin secure`) runs
//! in CI: every step agrees with its Istio YAML.

use mesh_examples::secure::{self, PRODUCTPAGE};

#[tokio::test]
async fn secure_example_agrees_with_its_config() {
    let report = match secure::run().await {
        Ok(r) => r,
        Err(e) => panic!("setup failed: {e}"),
    };
    assert!(report.ok(), "\n{report}");
    let got: Vec<&str> = report.steps.iter().map(|s| s.got.as_str()).collect();
    assert_eq!(
        got,
        [
            format!("200 hello {PRODUCTPAGE}").as_str(),
            "403 RBAC: access denied",
            "403 RBAC: access denied",
            "refused",
        ]
    );
}
