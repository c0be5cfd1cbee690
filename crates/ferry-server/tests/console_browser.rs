//! The console in a real browser: Debian's chromium driven over W3C WebDriver (chromedriver
//! started by the test, thirtyfour as the client), against two real regions. Elements are found
//! the way a person finds them: fields by their label, buttons and links by their text. Each
//! page's screenshot is written to docs/img/ (the README shows them).
//!
//! Without `/usr/bin/chromedriver` the tests say they are skipped, unless
//! `FERRY_REQUIRE_BROWSER` is set (CI sets it): then a missing driver is a failure.

use std::net::SocketAddr;
use std::path::PathBuf;

use thirtyfour::prelude::*;

use crate::common::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless chromium and its driver, ended when dropped.
struct Browser {
    driver: Option<WebDriver>,
    _chromedriver: tokio::process::Child,
}

impl Browser {
    /// `None` (skipped) when the driver is not installed and CI does not require it.
    async fn start() -> Option<Self> {
        if !std::path::Path::new(CHROMEDRIVER).exists() {
            assert!(
                std::env::var_os("FERRY_REQUIRE_BROWSER").is_none(),
                "{CHROMEDRIVER} is missing: install chromium and chromium-driver (.ci/run does)"
            );
            eprintln!("SKIPPED: {CHROMEDRIVER} is not installed (apt-get install chromium chromium-driver)");
            return None;
        }
        let port = free_port();
        let chromedriver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until("chromedriver listening", 30, || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(CHROMIUM).unwrap();
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"] {
            caps.add_arg(arg).unwrap();
        }
        let driver = WebDriver::new(format!("http://{addr}"), caps).await.expect("a browser session");
        Some(Self { driver: Some(driver), _chromedriver: chromedriver })
    }

    fn d(&self) -> &WebDriver {
        self.driver.as_ref().expect("open")
    }

    /// The input labelled `label`.
    async fn field(&self, label: &str) -> WebElement {
        let xpath = format!("//input[@id=//label[normalize-space()='{label}']/@for]");
        self.d().query(By::XPath(&xpath)).first().await.unwrap_or_else(|e| panic!("no field labelled {label}: {e}"))
    }

    /// The button or link whose text is `text`, once it is there.
    async fn named(&self, text: &str) -> WebElement {
        let xpath = format!("//button[normalize-space()='{text}'] | //a[normalize-space()='{text}']");
        self.d().query(By::XPath(&xpath)).first().await.unwrap_or_else(|e| panic!("no button or link {text}: {e}"))
    }

    async fn title(&self) -> String {
        self.d().title().await.unwrap()
    }

    /// Writes a screenshot of the current page to docs/img/console-NAME.png.
    async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/img");
        std::fs::create_dir_all(&dir).unwrap();
        self.d().screenshot(&dir.join(format!("console-{name}.png"))).await.unwrap();
    }

    async fn quit(mut self) {
        if let Some(d) = self.driver.take() {
            d.quit().await.unwrap();
        }
    }
}

/// Sign in through the form, see the account's buckets, open one, sign out: every page
/// reached by what a person would click.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_browse_buckets_and_sign_out_in_a_browser() {
    let Some(b) = Browser::start().await else { return };
    let (server, console, _dir) = crate::console::console_cluster().await;
    let url = format!("http://{console}");
    // main-a replicates to main-b in the other region, and has replicated one object.
    let (us, eu) = (crate::console::main_client(&server, 0), crate::console::main_client(&server, 1));
    enable_versioning(&us, "main-a").await;
    enable_versioning(&eu, "main-b").await;
    let rules = simple_rules(&["arn:aws:s3:eu-west-1::main-b"]);
    us.put_bucket_replication().bucket("main-a").replication_configuration(rules).send().await.unwrap();
    let v = put(&us, "main-a", "hello.txt", b"hello").await.version_id.unwrap();
    wait_for_version("the object replicated", 30, &eu, "main-b", "hello.txt", &v).await;
    b.d().goto(format!("{url}/buckets/us-east-1/main-a")).await.unwrap();
    assert_eq!(b.title().await, "Sign in · Ferry console", "signed out, pages lead to sign-in");
    b.screenshot("sign-in").await;
    b.field("Access key").await.send_keys(MAIN_AK).await.unwrap();
    b.field("Secret key").await.send_keys("not the secret").await.unwrap();
    b.named("Sign in").await.click().await.unwrap();
    let error = match b.d().query(By::Css("p.error")).first().await {
        Ok(e) => e,
        Err(e) => panic!("the failure is not shown ({e}): {}", b.d().source().await.unwrap_or_default()),
    };
    assert_eq!(error.text().await.unwrap(), "Unknown access key or wrong secret key.");
    b.field("Access key").await.send_keys(MAIN_AK).await.unwrap();
    b.field("Secret key").await.send_keys(MAIN_SK).await.unwrap();
    b.named("Sign in").await.click().await.unwrap();
    b.named("main-b").await;
    assert_eq!(b.title().await, "Buckets · Ferry console");
    let text = b.d().find(By::Tag("main")).await.unwrap().text().await.unwrap();
    assert!(text.contains("main-a") && text.contains("eu-west-1") && !text.contains("alt-a"), "{text}");
    assert!(text.contains("main-a us-east-1 Enabled source"), "main-a is a source: {text}");
    assert!(text.contains("main-b eu-west-1 Enabled destination"), "main-b is its destination: {text}");
    b.screenshot("buckets").await;
    // A new bucket, in the other region, from the form.
    b.field("Bucket name").await.send_keys("from-the-console").await.unwrap();
    let region = b.d().query(By::XPath("//select[@id=//label[normalize-space()='Region']/@for]")).first().await.unwrap();
    region.find(By::XPath("option[@value='eu-west-1']")).await.unwrap().click().await.unwrap();
    b.named("Create bucket").await.click().await.unwrap();
    b.d().query(By::XPath("//h1[normalize-space()='from-the-console']")).first().await.expect("the new bucket's page");
    let v = eu.get_bucket_versioning().bucket("from-the-console").send().await.unwrap();
    assert_eq!(
        v.status().map(|s| s.as_str().to_owned()),
        Some("Enabled".to_owned()),
        "created in eu-west-1, versioned"
    );
    b.named("Buckets").await.click().await.unwrap();
    b.named("main-a").await.click().await.unwrap();
    b.d().query(By::XPath("//h1[normalize-space()='main-a']")).first().await.expect("the bucket page");
    let text = b.d().find(By::Tag("main")).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("rule-0") && text.contains("eu-west-1 / main-b"),
        "the rule and its destination: {text}"
    );
    b.screenshot("bucket").await;
    b.named("Objects").await.click().await.unwrap();
    b.d().query(By::XPath("//td[normalize-space()='hello.txt']")).first().await.expect("the object is listed");
    b.screenshot("objects").await;
    b.named("Sign out").await.click().await.unwrap();
    b.field("Access key").await;
    b.d().goto(format!("{url}/")).await.unwrap();
    assert_eq!(b.title().await, "Sign in · Ferry console", "signed out for good");
    b.quit().await;
    server.shutdown().await;
}
