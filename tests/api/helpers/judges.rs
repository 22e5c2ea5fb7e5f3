//! The independent judges of tests/judges/: small Python programs built on other people's
//! implementations (the `email` package, dkimpy, pyspf, prometheus_client).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use super::TestApp;

/// Whether python3 can import `modules` (`"spf, dns.resolver"`); without them the caller
/// skips, unless `MAILROOM_TEST_REQUIRE_EXTERNAL=1` makes that a failure.
pub fn importable(modules: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            std::env::var("MAILROOM_TEST_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "MAILROOM_TEST_REQUIRE_EXTERNAL=1 but python3 cannot import {modules}"
        );
        eprintln!("skipped: python3 cannot import {modules}");
    }
    found
}

/// Runs tests/judges/`script` with `args` and `input` on its stdin: whether it succeeded,
/// and what it printed (its stderr goes to the test's log).
pub fn judge(script: &str, args: &[&str], input: &[u8]) -> (bool, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/judges")
        .join(script);
    let mut child = Command::new("python3")
        .arg(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    eprintln!("{script}: {}", String::from_utf8_lossy(&output.stderr));
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

/// Whether dkimpy verifies every signature of `message`, finding each key as the internet
/// would: the signing domain's names at `tenant_dns`, the CNAME's target at mailroom's DNS
/// server.
pub fn dkim_verifies(message: &[u8], tenant_dns: SocketAddr, app: &TestApp) -> bool {
    dkim_signatures(message, tenant_dns, app).0
}

/// As `dkim_verifies`, with each signature's `(algorithm, selector, verified)`, top first.
pub fn dkim_signatures(
    message: &[u8],
    tenant_dns: SocketAddr,
    app: &TestApp,
) -> (bool, Vec<(String, String, bool)>) {
    let zone_dns = app
        .dns_address
        .expect("mailroom's DNS server runs")
        .to_string();
    let args = [
        tenant_dns.to_string(),
        app.settings.dkim_zone.clone(),
        zone_dns,
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, printed) = judge("dkim_verify.py", &args, message);
    let signatures: Vec<serde_json::Value> = serde_json::from_str(&printed).unwrap();
    let signatures = signatures
        .iter()
        .map(|s| {
            (
                s["algorithm"].as_str().unwrap().to_string(),
                s["selector"].as_str().unwrap().to_string(),
                s["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    (ok, signatures)
}
