//! Headless Chromium (Debian's chromium, installed by scripts/setup.sh) for pages
//! that must render in a real browser.
#![allow(dead_code)]
use std::path::Path;
use std::process::Command;

/// The browser binary, or None (skip) outside CI when none is installed.
pub fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        assert!(!super::in_ci(), "chromium missing under CI (scripts/setup.sh installs it)");
        eprintln!("skipping the browser part: no chromium (run scripts/setup.sh)");
    }
    found
}

fn headless(browser: &str, profile: &Path, url: &str, extra: &[&str]) -> Vec<u8> {
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=4000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The DOM after the page's scripts ran (4 s of virtual time).
pub fn rendered_dom(browser: &str, profile: &Path, url: &str) -> String {
    String::from_utf8(headless(browser, profile, url, &["--dump-dom"])).expect("UTF-8 DOM")
}

/// A PNG screenshot of the page, kept under the test target dir's `artifacts/`; returns its bytes.
pub fn screenshot(browser: &str, profile: &Path, url: &str, name: &str) -> Vec<u8> {
    let artifacts = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join(name);
    let _ = std::fs::remove_file(&shot);
    headless(browser, profile, url, &["--window-size=1280,1000", &format!("--screenshot={}", shot.display())]);
    eprintln!("screenshot: {}", shot.display());
    std::fs::read(&shot).expect("screenshot written")
}

/// The `data-node-id` values of a rendered status page, in order.
pub fn node_ids(dom: &str) -> Vec<String> {
    dom.match_indices("data-node-id=\"")
        .map(|(i, m)| dom[i + m.len()..].split('"').next().unwrap_or("").to_string())
        .collect()
}
