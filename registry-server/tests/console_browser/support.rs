//! What the browser tests stand on: the real `blocks serve` on a free port with a temporary
//! `$BLOCKS_HOME` ([`Server`], with an API client holding the first admin token), chromedriver
//! and headless Chromium ([`Driver`], [`Browser`]), the three as a test starts them
//! ([`Console`]), and the project's skip rule for machines without a browser.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// `blocks serve` itself, shared with the other integration tests.
#[path = "../common/mod.rs"]
mod common;

/// How long a page (or an element on it) may take to appear.
const PATIENCE: Duration = Duration::from_secs(20);

/// What a browser test runs on: the server, chromedriver and one window on the console
/// (dropped in the order a test's own variables were: the window, the driver, the server).
pub(crate) struct Console {
    /// The window.
    pub(crate) b: Browser,
    /// The driver, for more windows.
    pub(crate) driver: Driver,
    pub(crate) server: Server,
}

impl Console {
    /// The server, chromedriver and a window with JavaScript on or off; `None` when the
    /// test is skipped for want of a browser (never under `CI`: see [`browser_tools`]).
    pub(crate) async fn start(javascript: bool) -> Option<Self> {
        let (driver, chromium) = browser_tools()?;
        let server = Server::start();
        let driver = Driver::start(&driver, &chromium).await;
        let b = driver.browser(&server.base, javascript).await;
        Some(Self { b, driver, server })
    }

    /// Closes the window; the driver and the server go when dropped.
    pub(crate) async fn close(self) {
        self.b.close().await;
    }
}

/// The browser and its driver, or `None` when the test should be skipped (never under `CI`).
/// `CHROMEDRIVER` and `CHROMIUM` name other binaries than the ones on `PATH`.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let named =
        |var: &str| std::env::var_os(var).map(|p| Some(PathBuf::from(p)).filter(|p| p.is_file()));
    let driver = named("CHROMEDRIVER").unwrap_or_else(|| on_path("chromedriver"));
    let chromium = named("CHROMIUM").unwrap_or_else(|| {
        ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find_map(on_path)
    });
    match (driver, chromium) {
        (Some(driver), Some(chromium)) => Some((driver, chromium)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "CI is set but chromedriver or chromium is not installed (apt-get install chromium chromium-driver)"
        ),
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "skipped: the console browser tests need chromedriver and chromium on PATH (apt-get install chromium chromium-driver)"
                );
            }
            None
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A free TCP port on the loopback interface (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Kills a child's whole process group (the child and what it started).
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// `blocks serve` on a free port with its own `$BLOCKS_HOME`, killed when dropped.
pub(crate) struct Server {
    /// The child, killed when this is dropped (before `_home` goes: fields drop in order).
    _process: common::Server,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub(crate) base: String,
    /// The first admin token, from `$BLOCKS_HOME/profile.toml`.
    pub(crate) admin: String,
    http: reqwest::Client,
    _home: tempfile::TempDir,
}

/// An API answer: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Server {
    pub(crate) fn start() -> Self {
        let home = tempfile::tempdir().expect("a temporary BLOCKS_HOME");
        let show = std::env::var_os("TEST_LOG").is_some();
        let process = common::Server::start(
            home.path(),
            &["BLOCKS_API_URL", "BLOCKS_API_KEY"],
            &[],
            move |line| {
                if show {
                    log(line);
                }
            },
        );
        let profile = std::fs::read_to_string(home.path().join("profile.toml"))
            .expect("serve wrote profile.toml");
        let admin = profile
            .lines()
            .find_map(|l| l.strip_prefix("api_key = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("profile.toml holds api_key")
            .to_owned();
        let port = process.addr.rsplit(':').next().expect("a port");
        Self {
            base: format!("http://127.0.0.1:{port}"),
            _process: process,
            admin,
            http: reqwest::Client::new(),
            _home: home,
        }
    }

    /// An API call with `token` (`path` starts at `/api/`).
    pub(crate) async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.expect("an API answer body");
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// An API call with the admin token that must answer 2xx; its JSON body.
    #[track_caller]
    pub(crate) fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> impl Future<Output = Value> + '_ {
        let caller = std::panic::Location::caller();
        let path = path.to_owned();
        async move {
            let answer = self
                .call_as(&self.admin, method.clone(), &path, body.as_ref())
                .await;
            assert!(
                (200..300).contains(&answer.status),
                "{method} {path} answered {} {} (called at {caller})",
                answer.status,
                answer.body
            );
            answer.body
        }
    }

    /// A named document as the API stores it, secrets included (`None` when there is none).
    pub(crate) async fn document(&self, slug: &str, name: &str) -> Option<Value> {
        let answer = self
            .call_as(
                &self.admin,
                reqwest::Method::GET,
                &format!(
                    "/api/block_types/slug/{slug}/block_documents/name/{name}?include_secrets=true"
                ),
                None,
            )
            .await;
        match answer.status {
            200 => Some(answer.body),
            404 => None,
            other => panic!("reading {slug}/{name} answered {other} {}", answer.body),
        }
    }

    /// How many documents of a type are stored.
    pub(crate) async fn count(&self, slug: &str) -> usize {
        self.api(
            reqwest::Method::GET,
            &format!("/api/block_types/slug/{slug}/block_documents"),
            None,
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    /// Creates a token with these scopes; its id and secret.
    pub(crate) async fn token(&self, name: &str, scopes: &[&str]) -> (String, String) {
        let created = self
            .api(
                reqwest::Method::POST,
                "/api/tokens",
                Some(json!({"name": name, "scopes": scopes})),
            )
            .await;
        (
            created["id"].as_str().expect("a token id").to_owned(),
            created["token"].as_str().expect("the token").to_owned(),
        )
    }
}

#[allow(clippy::print_stderr)]
fn log(line: &str) {
    eprintln!("{line}");
}

/// A running chromedriver (in its own process group, killed with what it started).
pub(crate) struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

impl Driver {
    pub(crate) async fn start(driver: &Path, chromium: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            chromium: chromium.to_owned(),
        };
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            let ready = http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(ready) = ready
                && ready
                    .json::<Value>()
                    .await
                    .is_ok_and(|s| s["value"]["ready"] == true)
            {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "chromedriver did not answer /status"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new headless Chromium window with a fresh profile.
    pub(crate) async fn browser(&self, base: &str, javascript: bool) -> Browser {
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
            "--window-size=1280,900".to_owned(),
        ];
        let mut prefs = serde_json::Map::new();
        if !javascript {
            args.push("--blink-settings=scriptEnabled=false".to_owned());
            prefs.insert(
                "profile.managed_default_content_settings.javascript".to_owned(),
                json!(2),
            );
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": args,
                "prefs": prefs,
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session");
        Browser {
            client,
            base: base.to_owned(),
            _profile: profile,
        }
    }
}

/// One browser window on the console, with the few verbs the flows use. Every verb names
/// the selector it failed on.
pub(crate) struct Browser {
    pub(crate) client: Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Opens a console path (`/blocks`).
    pub(crate) async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    }

    /// The current path and query (`/blocks/…?saved=1`).
    pub(crate) async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Waits until the current path starts with `prefix` (after a click that navigates).
    pub(crate) async fn wait_for_path(&self, prefix: &str) -> String {
        let started = Instant::now();
        loop {
            let path = self.path().await;
            if path.starts_with(prefix) {
                return path;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "expected to arrive at {prefix}, still at {path}: {}",
                self.main_text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "no element {css} on {}: {e}\n{}",
                self.path_now().await,
                self.main_text().await
            ),
        }
    }

    async fn path_now(&self) -> String {
        self.client
            .current_url()
            .await
            .map_or_else(|_| "?".to_owned(), |u| u.to_string())
    }

    /// Whether an element matches now (no waiting).
    pub(crate) async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("a search")
            .is_empty()
    }

    /// Replaces the text of an input or textarea, as typed.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clearing {css}: {e}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    pub(crate) async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Clicks a link or button that loads another page, and waits until that page replaced
    /// this one (the old document's root went stale) and finished loading.
    pub(crate) async fn click_and_load(&self, css: &str) {
        let old = self
            .client
            .find(Locator::Css("html"))
            .await
            .expect("a page before the click");
        self.click(css).await;
        let started = Instant::now();
        while old.tag_name().await.is_ok() {
            assert!(
                started.elapsed() < PATIENCE,
                "clicking {css} loaded no new page; still at {}",
                self.path_now().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        while self.script("return document.readyState").await != "complete" {
            assert!(
                started.elapsed() < PATIENCE,
                "the page after clicking {css} did not finish loading"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Chooses the option with this value in a `<select>`.
    pub(crate) async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("choosing {value} in {css}: {e}"));
    }

    /// The visible text of an element.
    pub(crate) async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading {css}: {e}"))
    }

    /// The text of `<main>`, for assertion messages and content checks.
    pub(crate) async fn main_text(&self) -> String {
        match self.client.find(Locator::Css("main")).await {
            Ok(main) => main.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// An element's property (`value`, `checked`) as the page has it now.
    pub(crate) async fn prop(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)
            .await
            .prop(name)
            .await
            .unwrap_or_else(|e| panic!("reading {name} of {css}: {e}"))
    }

    /// The value of a form field as the page has it now (typed or chosen).
    pub(crate) async fn value(&self, css: &str) -> Option<String> {
        self.prop(css, "value").await
    }

    pub(crate) async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css)
            .await
            .attr(name)
            .await
            .unwrap_or_else(|e| panic!("reading {name} of {css}: {e}"))
    }

    /// Whether a form field is marked invalid (`aria-invalid="true"`).
    pub(crate) async fn invalid(&self, css: &str) -> bool {
        self.attr(css, "aria-invalid").await.as_deref() == Some("true")
    }

    pub(crate) async fn displayed(&self, css: &str) -> bool {
        self.find(css)
            .await
            .is_displayed()
            .await
            .unwrap_or_else(|e| panic!("checking {css} is shown: {e}"))
    }

    /// The page's HTML as the browser has it.
    pub(crate) async fn source(&self) -> String {
        self.client.source().await.expect("the page source")
    }

    /// Runs a script in the page (WebDriver's, which the page's CSP does not govern).
    pub(crate) async fn script(&self, js: &str) -> Value {
        self.client
            .execute(js, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running a script: {e}"))
    }

    /// Saves a screenshot of the window as `docs/console/<name>.png` when
    /// `BLOCKS_SCREENSHOTS=1` (so ordinary runs leave the committed pictures alone).
    pub(crate) async fn screenshot(&self, name: &str) {
        if std::env::var("BLOCKS_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("writing the screenshot");
    }

    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
    }
}
