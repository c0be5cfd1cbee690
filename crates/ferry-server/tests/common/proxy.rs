//! An HTTP proxy that makes chosen buckets of an S3 endpoint throttle (503 SlowDown).

use std::net::SocketAddr;

type ProxyError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP proxy in front of an S3 endpoint that answers `503 SlowDown` to every request for
/// the buckets in its refusal list, and forwards the rest unchanged (headers included, so
/// signatures stay valid): one destination bucket throttling while the others work.
pub struct SlowDownProxy {
    pub addr: SocketAddr,
    refused: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowDownProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let client: hyper_util::client::legacy::Client<_, hyper::body::Incoming> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let r = refused.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (client, refused) = (client.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        let (client, refused) = (client.clone(), refused.clone());
                        async move {
                            let bucket = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or("").to_owned();
                            if refused.lock().unwrap().contains(&bucket) {
                                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                                let full = http_body_util::Full::new(bytes::Bytes::from(body));
                                let resp =
                                    http::Response::builder().status(503).body(full.map_err(|e| match e {}).boxed()).unwrap();
                                return Ok::<_, hyper_util::client::legacy::Error>(resp);
                            }
                            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                            *req.uri_mut() = format!("http://{upstream}{pq}").parse().unwrap();
                            let resp = client.request(req).await?;
                            Ok(resp.map(|b| b.map_err(|e| -> ProxyError { Box::new(e) }).boxed()))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, refused, task }
    }

    /// Answers 503 SlowDown to every request for `bucket` from now on.
    pub fn refuse(&self, bucket: &str) {
        self.refused.lock().unwrap().push(bucket.to_owned());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SlowDownProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
