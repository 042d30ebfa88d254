//! Headless Chromium (Debian's `chromium`, no browser download), driven over
//! its DevTools protocol: open a page, wait until its text shows a condition
//! (with a deadline, not a fixed sleep), take a screenshot. Chromium's
//! `--dump-dom --virtual-time-budget` cannot do this for the board: virtual
//! time stands still while a fetch is open, and the board's log stream stays
//! open by design.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

const DEADLINE: Duration = Duration::from_secs(30);

/// The Chromium binary; CI fails without it (`.ci/run` installs it).
pub fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("this test needs Chromium: apt-get install chromium (.ci/run installs it)")
}

/// Where the browser tests write screenshots: `$IDEMQ_SCREENSHOTS`, else
/// `screenshots/` in the cargo target directory (`target/screenshots/`).
pub fn screenshots_dir() -> PathBuf {
    let dir = match std::env::var_os("IDEMQ_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("screenshots"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Browser {
    child: Child,
    profile: PathBuf,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// A 1400x1000 window whose every request carries `authorization`.
    pub async fn launch(authorization: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!("idemq-chromium-{}", uuid::Uuid::new_v4().simple()));
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it chose into the profile.
        let started = Instant::now();
        let port = loop {
            let file = std::fs::read_to_string(profile.join("DevToolsActivePort")).unwrap_or_default();
            if let Some(port) = file.lines().next().and_then(|l| l.parse::<u16>().ok()) {
                break port;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let targets: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (page, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut browser = Browser {
            child,
            profile,
            page,
            next_id: 0,
        };
        browser.call("Network.enable", json!({})).await;
        browser
            .call(
                "Network.setExtraHTTPHeaders",
                json!({ "headers": { "Authorization": authorization } }),
            )
            .await;
        browser.call("Page.enable", json!({})).await;
        browser
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params }).to_string();
        self.page.send(Message::text(message)).await.unwrap();
        let answer = tokio::time::timeout(DEADLINE, async {
            loop {
                let Some(Ok(Message::Text(text))) = self.page.next().await else {
                    continue;
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    pub async fn open(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(r.get("errorText").is_none(), "{url}: {r}");
    }

    /// The page's text.
    pub async fn text(&mut self) -> String {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": "document.body ? document.body.innerText : ''", "returnByValue": true }),
            )
            .await;
        r["result"]["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the page's text contains every one of `needles`; returns it.
    pub async fn wait_for_text(&mut self, needles: &[&str]) -> String {
        let started = Instant::now();
        loop {
            let text = self.text().await;
            if needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the page never showed {needles:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `selector` (a form button: the page navigates).
    pub async fn click(&mut self, selector: &str) {
        let expression = format!("document.querySelector({}).click()", json!(selector));
        self.call("Runtime.evaluate", json!({ "expression": expression }))
            .await;
    }

    /// Emulates a phone-sized screen (`width` CSS pixels wide).
    pub async fn phone(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 2, "mobile": true }),
        )
        .await;
    }

    /// A PNG of the window as `<screenshots_dir>/<name>.png`.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let file = screenshots_dir().join(format!("{name}.png"));
        std::fs::write(&file, png).unwrap();
        file
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
