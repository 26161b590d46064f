//! Identity and security on loopback, from Istio YAML: a test CA, a
//! `reviews` server in STRICT mTLS behind an AuthorizationPolicy, and three
//! callers (an allowed identity, another identity, plaintext). Prints each
//! step; exits non-zero if any disagrees with the config. The logic is
//! `mesh_examples::secure`.
//!
//! ```text
//! cargo run -p mesh-examples --bin secure
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match mesh_examples::secure::run().await {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                println!("all steps agree with the config");
                ExitCode::SUCCESS
            } else {
                eprintln!("some steps disagree with the config");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("setup failed: {e}");
            ExitCode::FAILURE
        }
    }
}
