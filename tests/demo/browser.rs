//! A headless Chromium driven through ChromeDriver's WebDriver API (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/ensure-browser`), with a fresh profile.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

/// Longest wait for something the page should show.
const PATIENCE: Duration = Duration::from_secs(20);

pub struct Browser {
    driver: Child,
    session: String,
    _profile: tempfile::TempDir,
    client: reqwest::blocking::Client,
}

impl Browser {
    pub fn start() -> Browser {
        // ChromeDriver picks a free port itself and says which (no port taken by another
        // process between a test choosing it and ChromeDriver binding it).
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/ensure-browser installs it)");
        let Some(port) = announced_port(driver.stdout.take().expect("piped")) else {
            let _ = driver.kill();
            let _ = driver.wait();
            panic!("chromedriver did not say which port it started on");
        };
        let client = reqwest::blocking::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1400,1000",
                ],
            },
        }}});
        let created: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            driver,
            session: format!("{base}/session/{session}"),
            _profile: profile,
            client,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let request = self
            .client
            .request(method, format!("{}{path}", self.session));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let answer: Value = request.send().unwrap().json().unwrap();
        answer["value"].clone()
    }

    pub fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    /// The WebDriver id of the first element matching `selector`, if any.
    fn find(&self, selector: &str) -> Option<String> {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": selector})),
        );
        found
            .as_object()?
            .values()
            .next()?
            .as_str()
            .map(str::to_owned)
    }

    /// The text of the first element matching `selector` ("" when there is none).
    pub fn text(&self, selector: &str) -> String {
        self.find(selector)
            .map(|id| {
                let text = self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None);
                text.as_str().unwrap_or_default().to_owned()
            })
            .unwrap_or_default()
    }

    /// Waits until the text of `selector` satisfies `done`; returns it.
    pub fn wait_for_text(&self, selector: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let text = self.text(selector);
            if done(&text) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{selector} shows {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn click(&self, selector: &str) {
        let id = self
            .find(selector)
            .unwrap_or_else(|| panic!("nothing matches {selector}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        );
    }

    pub fn screenshot(&self, path: &std::path::Path) {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.client.delete(&self.session).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The port ChromeDriver started on, from its line "ChromeDriver was started successfully on
/// port N." (printed once it listens); the rest of its output is read on and dropped, so that
/// it never blocks on a full pipe.
fn announced_port(stdout: std::process::ChildStdout) -> Option<u16> {
    use std::io::BufRead;
    let (found, port) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let announced = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
            if let (Some(port), Some(sender)) = (announced, found.as_ref()) {
                let _ = sender.send(port);
                found = None;
            }
        }
    });
    port.recv_timeout(PATIENCE).ok()
}
