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
    assert!(
        text.contains("main-a us-east-1 Enabled 1 5 B source"),
        "main-a is a source, one object: {text}"
    );
    assert!(
        text.contains("main-b eu-west-1 Enabled 1 5 B destination"),
        "main-b is its destination, with the replica: {text}"
    );
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
    // A state change sent from the page without the session's token is refused, and does
    // nothing.
    let status = b
        .d()
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/buckets/us-east-1/main-a/delete', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'csrf='})
               .then(r => done(r.status), e => done(String(e)));",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(status.json(), &serde_json::json!(403), "refused without the token");
    assert!(us.head_bucket().bucket("main-a").send().await.is_ok(), "main-a is still there");
    b.named("Sign out").await.click().await.unwrap();
    b.field("Access key").await;
    b.d().goto(format!("{url}/")).await.unwrap();
    assert_eq!(b.title().await, "Sign in · Ferry console", "signed out for good");
    // Another account signs in on the same browser and sees its own bucket only.
    b.field("Access key").await.send_keys(ALT_AK).await.unwrap();
    b.field("Secret key").await.send_keys(ALT_SK).await.unwrap();
    b.named("Sign in").await.click().await.unwrap();
    b.named("alt-a").await;
    let text = b.d().find(By::Tag("main")).await.unwrap().text().await.unwrap();
    assert!(
        !text.contains("main-a") && !text.contains("main-b"),
        "the first account's buckets are not shown: {text}"
    );
    b.d().goto(format!("{url}/buckets/us-east-1/main-a/replication")).await.unwrap();
    assert_eq!(b.title().await, "No such bucket · Ferry console", "nor their pages");
    b.quit().await;
    server.shutdown().await;
}

impl Browser {
    /// The text of the first element matching `css`, or empty when there is none.
    async fn text_of(&self, css: &str) -> String {
        match self.d().find(By::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits (polling the page as it is, never reloading it) until the text of `css` passes
    /// `ok`; returns that text.
    async fn wait_text(&self, what: &str, css: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let text = self.text_of(css).await;
            if ok(&text) {
                return text;
            }
            if std::time::Instant::now() > deadline {
                let page = self.d().find(By::Tag("main")).await.unwrap().text().await.unwrap_or_default();
                panic!("{what}: `{css}` reads `{text}` after {secs} s; the page:\n{page}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// The whole replication story in a browser, against two `ferry serve` processes: the wizard
/// on a bucket that already holds objects (with Replicate existing objects, and the
/// destination created by the wizard), migration to 100 % and "replicated up to" advancing on
/// the live dashboard without a reload, an upload whose version turns COMPLETED, the
/// destination stopped (the failure and its reason shown), started again and `Retry`, and
/// `Verify` reporting the two buckets in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_configured_and_watched_in_a_browser() {
    let Some(b) = Browser::start().await else { return };
    let console_port = free_port();
    let extra = format!("[console]\nlisten = \"127.0.0.1:{console_port}\"\n\n[replication]\ngive_up_after = \"2s\"\n");
    let two = TwoProcesses::configure(Link::Direct, &extra).await;
    let mut eu_proc = Some(two.spawn_eu());
    let _us_proc = two.spawn_us();
    let url = format!("http://127.0.0.1:{console_port}");
    let (us, eu) = (two.us(), two.eu());
    create_versioned_bucket(&us, "photos").await;
    for i in 0..25 {
        put(&us, "photos", &format!("album/{i:02}.jpg"), format!("picture {i}").as_bytes()).await;
    }
    // Sign in, open the bucket, its replication view, and the wizard.
    b.d().goto(format!("{url}/")).await.unwrap();
    b.field("Access key").await.send_keys(MAIN_AK).await.unwrap();
    b.field("Secret key").await.send_keys(MAIN_SK).await.unwrap();
    b.named("Sign in").await.click().await.unwrap();
    b.named("photos").await.click().await.unwrap();
    b.named("Replication").await.click().await.unwrap();
    b.named("Add rule").await.click().await.unwrap();
    b.field("Destination bucket").await.send_keys("photos-eu").await.unwrap();
    b.field("Create it, with versioning on, if it does not exist").await.click().await.unwrap();
    b.field("Replicate existing objects").await.click().await.unwrap();
    // The review shows the XML Save will send, updated as the form changes.
    let xml = b
        .wait_text("the review's XML", "pre.xml", 20, |t| {
            t.contains("arn:aws:s3:eu-west-1::photos-eu") && t.contains("<ExistingObjectReplication>")
        })
        .await;
    assert!(xml.contains("<ReplicationConfiguration>"), "{xml}");
    b.wait_text("the destination to be created", "ul.checks", 20, |t| t.contains("will be created")).await;
    b.screenshot("wizard").await;
    b.named("Save").await.click().await.unwrap();
    // The dashboard: migration reaches 100 % without a reload.
    b.d().query(By::XPath("//h1[normalize-space()='Replication of photos']")).first().await.expect("the replication view");
    b.d().execute("window.ferryNotReloaded = true;", Vec::new()).await.unwrap();
    b.wait_text("the historical migration", ".migration-text", 60, |t| t.starts_with("100 %")).await;
    let before = b.text_of(".up-to").await;
    eprintln!("dashboard at 100 %: {}", b.text_of("main").await);
    assert_eq!(
        compare_buckets(&us, "photos", &eu, "photos-eu").await,
        Vec::<String>::new(),
        "every existing version copied"
    );
    // A change made elsewhere moves "replicated up to" on the open page.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let v = put(&us, "photos", "album/new.jpg", b"new picture").await.version_id.unwrap();
    wait_for_version("the new version replicated", 30, &eu, "photos-eu", "album/new.jpg", &v).await;
    b.wait_text("replicated up to advancing", ".up-to", 30, |t| !t.is_empty() && t > before.as_str()).await;
    let same_page = b.d().execute("return window.ferryNotReloaded === true;", Vec::new()).await.unwrap();
    assert_eq!(same_page.json(), &serde_json::json!(true), "updated in place, never reloaded");
    b.screenshot("dashboard").await;
    // An upload from the browser, then its version's status.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"uploaded from the console").unwrap();
    b.named("photos").await.click().await.unwrap();
    b.field("Upload").await.send_keys(file.path().to_str().unwrap()).await.unwrap();
    let uploaded = file.path().file_name().unwrap().to_str().unwrap().to_owned();
    let said = b
        .wait_text("the upload to finish", "#upload-status", 30, |t| {
            t.starts_with("Uploaded") || t.contains("failed")
        })
        .await;
    assert_eq!(said, "Uploaded 1 file(s).");
    b.d().query(By::XPath(format!("//td[normalize-space()='{uploaded}']"))).first().await.expect("listed after the upload");
    let versions = format!("{url}/buckets/us-east-1/photos/versions?key={uploaded}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        b.d().goto(&versions).await.unwrap();
        if b.text_of("td.status").await == "COMPLETED" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload's version never turned COMPLETED: {}",
            b.text_of("main").await
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(get_bytes(&eu, "photos-eu", &uploaded).await, b"uploaded from the console");
    b.screenshot("versions").await;
    // The destination stops: the failure and its reason appear on the dashboard.
    eu_proc.take().unwrap().terminate();
    let lost = put(&us, "photos", "album/while-down.jpg", b"sent while eu-west-1 was down").await.version_id.unwrap();
    b.d().goto(format!("{url}/buckets/us-east-1/photos/replication")).await.unwrap();
    let reason = b.wait_text("the failure", "tr.failure td.reason", 60, |t| !t.is_empty()).await;
    assert!(b.text_of("tr.failure").await.contains("album/while-down.jpg"), "the failed key is named");
    assert!(reason.contains("gave up"), "the reason says what happened: {reason}");
    b.screenshot("failure").await;
    // Started again, Retry sends it.
    eu_proc = Some(two.spawn_eu());
    b.named("Retry").await.click().await.unwrap();
    b.wait_text("the failure to clear", "#failures", 60, |t| t.contains("No failed operation")).await;
    wait_for_version("the retried version", 30, &eu, "photos-eu", "album/while-down.jpg", &lost).await;
    // Verify compares the buckets, with its count shown live, and finds them in sync.
    b.named("Verify").await.click().await.unwrap();
    let verdict = b
        .wait_text("verify's result", ".verify", 60, |t| {
            // The count while it runs, then the result.
            !t.is_empty() && !t.starts_with("verifying") && t != "never verified"
        })
        .await;
    assert!(verdict.contains("in sync: 28 versions checked"), "{verdict}");
    // Signed out, the console's pages lead to the sign-in form.
    b.named("Sign out").await.click().await.unwrap();
    // The sign-out's answer first (it leads to the sign-in form): a page opened before it
    // would cancel the sign-out itself.
    wait_until("signed out", 30, || async { b.title().await == "Sign in · Ferry console" }).await;
    b.d().goto(format!("{url}/buckets/us-east-1/photos/replication")).await.unwrap();
    assert_eq!(b.title().await, "Sign in · Ferry console");
    b.quit().await;
    drop(eu_proc);
}
