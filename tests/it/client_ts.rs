//! The TypeScript client (`clients/typescript`) and the demo page (issue 12):
//! their Node tests run against the real `idemq` binary on a fresh database.
//! Node spawns, kills and restarts `idemq api` / `worker` / `dev` itself.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use idemq_devcluster::PgCluster;

use crate::helpers::*;

/// Node's tests of one run at a time (`npm ci` must not race itself).
static NODE: Mutex<()> = Mutex::new(());

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript")
}

/// A clean clone has no node_modules: install them from the committed lockfile.
fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules/.package-lock.json").exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .expect("npm is needed for the TypeScript client's tests (Node 20 or later)");
    assert!(
        out.status.success(),
        "npm ci failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `npm run <script>` with `env`; fails with Node's output when it fails.
async fn run_npm(script: &'static str, env: Vec<(&'static str, String)>) {
    let out = tokio::task::spawn_blocking(move || {
        let _one = NODE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = package_dir();
        ensure_node_modules(&dir);
        Command::new("npm")
            .args(["run", "--silent", script])
            .current_dir(&dir)
            .env_remove("IDEMQ_OPS_TOKEN")
            .env_remove("IDEMQ_API_ADDR")
            .envs(env)
            .output()
            .expect("running npm")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "npm run {script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

fn psql() -> String {
    PgCluster::find_bin_dir()
        .map(|d| d.join("psql").display().to_string())
        .unwrap_or_else(|_| "psql".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_client_against_real_idemq() {
    let db = fresh_db().await;
    idemq_core::seed::seed(&db.pool, 20, 3, 2).await.unwrap();
    let (_, token) = idemq_core::principal::create_token(&db.pool, "frontend")
        .await
        .unwrap();
    run_npm(
        "test:client",
        vec![
            ("IDEMQ_BIN", idemq_bin().to_owned()),
            ("DATABASE_URL", db.url.clone()),
            ("IDEMQ_TOKEN", token),
            ("PSQL", psql()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_page_in_headless_chromium() {
    // Never skipped: without a browser we would not know the page pays once.
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: apt-get install chromium"
    );
    // `idemq dev` on this database migrates, seeds and makes its own token.
    let db = fresh_db().await;
    run_npm(
        "test:browser",
        vec![
            ("IDEMQ_BIN", idemq_bin().to_owned()),
            ("DATABASE_URL", db.url.clone()),
            ("PSQL", psql()),
        ],
    )
    .await;
}
