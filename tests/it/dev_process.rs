//! `idemq dev` as a real process (issue 2).
use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn idemq_dev_comes_up_serves_healthz_and_stops_on_sigint() {
    let dir = std::env::temp_dir().join(format!("idemq-dev-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dev = idemq(["dev"])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env("IDEMQ_API_ADDR", "127.0.0.1:0")
        // Both listeners on ports of their own, so that runs side by side
        // (or a real `idemq dev`) do not collide on the default 3001.
        .env("IDEMQ_OPS_ADDR", "127.0.0.1:0")
        .spawn();
    let url = dev
        .wait_for("printed its URL", Duration::from_secs(60), |p| {
            p.stdout_after("api listening on ")
        })
        .await;
    // The lines before the URL.
    let banner: Vec<String> = dev
        .stdout_lines()
        .into_iter()
        .take_while(|l| !l.starts_with("api listening on "))
        .collect();
    assert!(
        banner.iter().any(|l| l.contains("token      idq_")),
        "{banner:#?}"
    );
    assert!(
        banner.iter().any(|l| l.contains("curl -i -X PATCH")),
        "{banner:#?}"
    );

    // The ops listener's address and password, as dev prints them.
    let ops_line = banner
        .iter()
        .find_map(|l| l.strip_prefix("Ops (dashboard, operations, /metrics): http://"))
        .unwrap_or_else(|| panic!("no ops address printed: {banner:#?}"));
    let (ops_addr, rest) = ops_line.split_once('/').expect("ops URL");
    let ops_addr: std::net::SocketAddr = ops_addr.parse().unwrap();
    let ops_token = rest.rsplit_once("password ").expect("ops password").1.trim();
    assert_ne!(
        ops_addr.port(),
        idemq_api::config::DEFAULT_OPS_ADDR
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .port(),
        "the ops listener took the fixed default port"
    );
    let metrics = reqwest::Client::new()
        .get(format!("http://{ops_addr}/metrics"))
        .bearer_auth(ops_token)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), reqwest::StatusCode::OK);

    let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(dir.join(".idemq/pgdata/PG_VERSION").exists());

    // Ctrl-C stops everything, the cluster included.
    dev.sigint();
    let exit = dev.wait_exit(Duration::from_secs(60)).await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        !dir.join(".idemq/pgdata/postmaster.pid").exists(),
        "cluster still running"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
