//! A small W3C WebDriver client over reqwest, enough for the console's browser tests: start
//! chromedriver, open a headless Chromium session, navigate, find elements, click, type, read
//! text, take screenshots, read cookies. No WebDriver crate: the protocol is a handful of JSON
//! calls.
//!
//! chromedriver is found as `$CHROMEDRIVER`, else `chromedriver` on PATH, else
//! `/usr/bin/chromedriver`; Chromium as `$CHROMIUM_BIN`, else `/usr/bin/chromium`. When either is
//! missing, [`Browser::start`] panics saying how to install them (`.ci/install-browser.sh`):
//! a browser test never passes without a browser.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(env: &str, name: &str, fallback: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    Some(PathBuf::from(fallback)).filter(|p| p.is_file())
}

/// A chromedriver process and one headless Chromium session in it. Dropping it ends the
/// session (Chromium quits) and kills the chromedriver this test started.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    port: u16,
    driver: Option<tokio::process::Child>,
    /// Where [`Browser::screenshot`] writes.
    pub screenshots: PathBuf,
}

/// A found element.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless session.
    pub async fn start(screenshots: &Path) -> Browser {
        let hint =
            "install them with `.ci/install-browser.sh` (Debian packages chromium and chromium-driver)";
        let driver = find_program("CHROMEDRIVER", "chromedriver", "/usr/bin/chromedriver")
            .unwrap_or_else(|| panic!("chromedriver not found (set CHROMEDRIVER or {hint})"));
        let chromium = find_program("CHROMIUM_BIN", "chromium", "/usr/bin/chromium")
            .unwrap_or_else(|| panic!("chromium not found (set CHROMIUM_BIN or {hint})"));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver on port {port} did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.to_string_lossy(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--window-size=1280,900", "--no-first-run", "--disable-extensions"],
                }
            }}
        });
        let r = http.post(format!("{base}/session")).json(&caps).send().await.expect("new session");
        let v: Value = r.json().await.expect("session answer");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver did not open a session: {v}"))
            .to_owned();
        std::fs::create_dir_all(screenshots).expect("screenshot folder");
        Browser { http, base, session, port, driver: Some(child), screenshots: screenshots.to_owned() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method.clone(), self.url(path));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "webdriver {method} {path}: {status} {v}");
        v["value"].clone()
    }

    async fn try_call(&self, method: reqwest::Method, path: &str, body: Value) -> Option<Value> {
        let r = self.http.request(method, self.url(path)).json(&body).send().await.ok()?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.ok()?;
        ok.then(|| v["value"].clone())
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching `css`, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find_now(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css:?} on {}", self.current_url().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element matching `css` now, if any.
    pub async fn find_now(&self, css: &str) -> Option<Element> {
        let v = self
            .try_call(reqwest::Method::POST, "/element", json!({ "using": "css selector", "value": css }))
            .await?;
        v[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        let v = self
            .call(reqwest::Method::POST, "/elements", Some(json!({ "using": "css selector", "value": css })))
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    pub async fn click(&self, e: &Element) {
        self.call(reqwest::Method::POST, &format!("/element/{}/click", e.0), Some(json!({}))).await;
    }

    /// Clicks the first element matching `css`, found again if the page reloaded itself
    /// between finding and clicking it.
    pub async fn click_on(&self, css: &str) {
        for _ in 0..20 {
            let e = self.find(css).await;
            let path = format!("/element/{}/click", e.0);
            if self.try_call(reqwest::Method::POST, &path, json!({})).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let e = self.find(css).await;
        self.click(&e).await;
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.call(reqwest::Method::POST, &format!("/element/{}/value", e.0), Some(json!({ "text": text })))
            .await;
    }

    pub async fn clear(&self, e: &Element) {
        self.call(reqwest::Method::POST, &format!("/element/{}/clear", e.0), Some(json!({}))).await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call(reqwest::Method::GET, &format!("/element/{}/text", e.0), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// An element's text, or `None` when the element went stale (the page reloaded itself
    /// between finding it and reading it: the overview refreshes every few seconds).
    async fn try_text(&self, e: &Element) -> Option<String> {
        let r = self.http.get(self.url(&format!("/element/{}/text", e.0))).send().await.ok()?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.ok()?;
        ok.then(|| v["value"].as_str().unwrap_or_default().to_owned())
    }

    /// The visible text of the first element matching `css` (found again if the page reloaded
    /// under it).
    pub async fn text_of(&self, css: &str) -> String {
        for _ in 0..20 {
            let e = self.find(css).await;
            if let Some(t) = self.try_text(&e).await {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let e = self.find(css).await;
        self.text(&e).await
    }

    /// A DOM property of an element (e.g. `value`).
    pub async fn property(&self, e: &Element, name: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/element/{}/property/{name}", e.0), None).await
    }

    /// Waits until the page's visible text contains `needle` (up to `timeout`), reloading it
    /// every `reload_every` when given; the text on failure says what was there.
    pub async fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find_now(css).await {
                let t = self.try_text(&e).await.unwrap_or_default();
                if t.contains(needle) {
                    return t;
                }
                assert!(
                    Instant::now() < deadline,
                    "{needle:?} not in {css:?} within {timeout:?}; it says: {t}"
                );
            } else {
                assert!(Instant::now() < deadline, "no {css:?} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The browser's cookies, HttpOnly ones included (WebDriver sees them; pages do not).
    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None).await.as_array().cloned().unwrap_or_default()
    }

    /// Runs `script` in the page (WebDriver's own channel, not subject to the page's CSP) and
    /// returns its value: for measurements such as the Navigation Timing entries.
    pub async fn execute(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    /// Writes a PNG of the window to `<screenshots>/<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot base64");
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Ends the session and chromedriver.
    pub async fn quit(mut self) {
        let _ = self.http.delete(self.url("")).send().await;
        self.session.clear();
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill().await;
        }
    }
}

impl Drop for Browser {
    /// A test that panicked still ends its Chromium: a raw DELETE of the session (no runtime
    /// is needed), then the chromedriver child is killed by `kill_on_drop`.
    fn drop(&mut self) {
        if self.session.is_empty() {
            return;
        }
        use std::io::Write as _;
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if s.write_all(request.as_bytes()).is_ok() {
                let mut buf = [0u8; 512];
                let _ = std::io::Read::read(&mut s, &mut buf);
            }
        }
    }
}
