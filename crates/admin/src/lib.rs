//! The admin endpoint (`--admin-addr`, default 127.0.0.1:9901) and the metrics-only endpoint
//! (`--metrics-addr`), served over HTTP/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A reload in progress, as the admin endpoint awaits it.
pub type ReloadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, ReloadError>> + Send + 'a>>;

/// Why `POST /reload` changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The proxy runs without `--config` (or from an in-memory spec): there is nothing to re-read.
    #[error("no configuration files to reload")]
    NotConfigured,
    /// The new configuration has errors; the running one stays. One entry per problem.
    #[error("configuration refused ({} problems); the running configuration stays", .0.len())]
    Refused(Vec<String>),
}

/// Where the admin endpoint reads the proxy's state and sends its commands.
pub trait AdminSource: Send + Sync + 'static {
    /// True when config is loaded, listeners are bound and the proxy is not draining.
    fn ready(&self) -> bool;
    /// `/server_info` JSON (`state` is `LIVE`, `DRAINING` or `INITIALIZING`).
    fn server_info(&self) -> serde_json::Value;
    /// `/config_dump` JSON: the running snapshot.
    fn config_dump(&self) -> serde_json::Value;
    /// `/clusters` text: one line per endpoint fact, Envoy's `cluster::addr::key::value` shape.
    fn clusters(&self) -> String;
    /// Refreshes sampled gauges before a scrape.
    fn refresh_stats(&self) {}
    /// Stops the proxy at once (`POST /quitquitquit`).
    fn quit(&self);
    /// Starts draining without exiting (`POST /drain_listeners`).
    fn drain(&self);
    /// Changes the log level (`POST /logging?level=L`).
    fn set_log_level(&self, level: &str) -> Result<(), String>;
    /// Re-reads the configuration files and swaps the new configuration in (`POST /reload`).
    /// `Ok` holds the reload report as JSON. Default is [`ReloadError::NotConfigured`].
    fn reload(&self) -> ReloadFuture<'_> {
        Box::pin(async { Err(ReloadError::NotConfigured) })
    }
    /// What the proxy would do with one request (`GET /explain`), as JSON. Default is
    /// [`ExplainFailure::Unsupported`].
    fn explain(&self, query: &ExplainQuery) -> Result<serde_json::Value, ExplainFailure> {
        let _ = query;
        Err(ExplainFailure::Unsupported)
    }
}

/// The request `GET /explain` asks about, from its query string (values percent-decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExplainQuery {
    /// `method=`. Default is `GET`.
    pub method: String,
    /// `url=`: an absolute URL (`http://svc.local:8080/path`). Required.
    pub url: String,
    /// Every `header=Name:value`, in order.
    pub headers: Vec<String>,
    /// `direction=ingress&port=P` (or `ingress_port=P`): an inbound request to app port P.
    /// Default is none (egress).
    pub ingress_port: Option<u16>,
    /// `dst=IP`: the connection's original destination address, which picks among TCP
    /// virtual services sharing a port. Default is none.
    pub dst: Option<std::net::IpAddr>,
}

/// Why `GET /explain` has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainFailure {
    /// This source cannot explain requests.
    #[error("explain is not available")]
    Unsupported,
    /// The request to explain is malformed.
    #[error("{0}")]
    BadRequest(String),
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminScope {
    /// Every admin endpoint.
    Full,
    /// Only `/ready` and `/stats/prometheus` (`--metrics-addr`, safe to expose).
    MetricsOnly,
}

/// Serves the admin endpoints on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    scope: AdminScope,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = source.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let source = source.clone();
                async move {
                    // The only endpoint that waits: a reload reads files and resolves names.
                    if scope == AdminScope::Full
                        && req.uri().path() == "/reload"
                        && *req.method() == Method::POST
                    {
                        return Ok::<_, Infallible>(reload_response(source.reload().await));
                    }
                    Ok::<_, Infallible>(route(&*source, scope, req))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn route(
    source: &dyn AdminSource,
    scope: AdminScope,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let method = req.method();
    let mutation = matches!(
        path,
        "/quitquitquit" | "/drain_listeners" | "/logging" | "/reload"
    );
    if mutation && *method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "this endpoint takes POST\n");
    }
    if !mutation && *method != Method::GET && *method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "this endpoint takes GET\n");
    }
    if scope == AdminScope::MetricsOnly && !matches!(path, "/ready" | "/stats/prometheus") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    match path {
        "/ready" => {
            if source.ready() {
                text(StatusCode::OK, "LIVE\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n")
            }
        }
        "/server_info" => json(&source.server_info()),
        "/config_dump" => json(&source.config_dump()),
        "/clusters" => text(StatusCode::OK, source.clusters()),
        "/explain" => match parse_explain_query(req.uri().query().unwrap_or("")) {
            Ok(q) => match source.explain(&q) {
                Ok(answer) => json(&answer),
                Err(ExplainFailure::Unsupported) => {
                    text(StatusCode::NOT_FOUND, "explain is not available\n")
                }
                Err(ExplainFailure::BadRequest(e)) => {
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
            },
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n{EXPLAIN_USAGE}\n")),
        },
        "/stats/prometheus" => {
            source.refresh_stats();
            let mut r = text(StatusCode::OK, outrider_telemetry::prometheus_text());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/stats" => {
            source.refresh_stats();
            text(
                StatusCode::OK,
                envoy_stats_text(&outrider_telemetry::prometheus_text()),
            )
        }
        "/quitquitquit" => {
            source.quit();
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            source.drain();
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => match query_param(&req, "level") {
            Some(level) => match source.set_log_level(level) {
                Ok(()) => text(StatusCode::OK, format!("log level set to {level}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            None => text(
                StatusCode::BAD_REQUEST,
                "usage: POST /logging?level=<trace|debug|info|warning|error|off>\n",
            ),
        },
        "/" | "/help" => text(
            StatusCode::OK,
            "GET /ready\nGET /server_info\nGET /config_dump\nGET /clusters\nGET /explain?method=M&url=U&header=K:V\nGET /stats\nGET /stats/prometheus\n\
             POST /drain_listeners\nPOST /logging?level=L\nPOST /quitquitquit\nPOST /reload\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// How `/explain` is called, shown on a bad query.
const EXPLAIN_USAGE: &str = "usage: GET /explain?method=GET&url=http://svc.local:8080/path&header=name:value \
     [&direction=ingress&port=P] [&dst=IP]";

/// Reads the `/explain` query: `method`, `url`, repeated `header`, and for ingress
/// `direction=ingress` with `port`, or `ingress_port`.
fn parse_explain_query(query: &str) -> Result<ExplainQuery, String> {
    let mut q = ExplainQuery {
        method: "GET".into(),
        ..ExplainQuery::default()
    };
    let mut ingress = false;
    let mut port = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
        match k {
            "method" => q.method = v,
            "url" => q.url = v,
            "header" => q.headers.push(v),
            "dst" => {
                q.dst = Some(
                    v.parse()
                        .map_err(|_| format!("bad dst {v:?}: give an IP address"))?,
                )
            }
            "direction" => ingress = v.eq_ignore_ascii_case("ingress"),
            "port" | "ingress_port" => {
                ingress |= k == "ingress_port";
                port = Some(v.parse::<u16>().map_err(|_| format!("bad port {v:?}"))?);
            }
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    if q.url.is_empty() {
        return Err("url is required".into());
    }
    if ingress {
        q.ingress_port = Some(port.ok_or("direction=ingress needs port=P")?);
    }
    Ok(q)
}

/// Form decoding: `%XX` escapes and `+` as a space. `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `POST /reload`: 200 with the report, 400 with every problem, 409 without config files.
fn reload_response(outcome: Result<serde_json::Value, ReloadError>) -> Response<Full<Bytes>> {
    match outcome {
        Ok(report) => json(&report),
        Err(ReloadError::NotConfigured) => text(
            StatusCode::CONFLICT,
            "no configuration files to reload (started without --config)\n",
        ),
        Err(ReloadError::Refused(problems)) => {
            let mut body = String::from("configuration refused; the running configuration stays\n");
            for p in &problems {
                body.push_str(p);
                body.push('\n');
            }
            text(StatusCode::BAD_REQUEST, body)
        }
    }
}

/// Envoy's `/stats` shape (`name: value`), derived from the Prometheus text: one line per
/// sample, labels kept in braces.
fn envoy_stats_text(prometheus: &str) -> String {
    let mut out = String::with_capacity(prometheus.len());
    for line in prometheus.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((name, value)) = line.rsplit_once(' ') {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_refusal_lists_every_problem() {
        let r = reload_response(Err(ReloadError::Refused(vec![
            "a: bad".into(),
            "b: worse".into(),
        ])));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = reload_response(Err(ReloadError::NotConfigured));
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let r = reload_response(Ok(serde_json::json!({"version": 2})));
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn explain_query_is_decoded() {
        let q = parse_explain_query(
            "method=POST&url=http%3A%2F%2Fsvc.local%3A8080%2Fa%3Fb%3D1&header=x-a:1&header=x-b%3A+2",
        )
        .unwrap();
        assert_eq!(q.method, "POST");
        assert_eq!(q.url, "http://svc.local:8080/a?b=1");
        assert_eq!(q.headers, vec!["x-a:1".to_string(), "x-b: 2".to_string()]);
        assert_eq!(q.ingress_port, None);
        let q = parse_explain_query("url=http://x/&direction=ingress&port=8080").unwrap();
        assert_eq!(q.ingress_port, Some(8080));
        let q = parse_explain_query("url=tcp://db.local:9000&dst=10.0.0.2").unwrap();
        assert_eq!(q.dst, Some([10, 0, 0, 2].into()));
        assert!(parse_explain_query("url=x&dst=db.local").is_err());
        assert!(parse_explain_query("method=GET").is_err());
        assert!(parse_explain_query("url=x&direction=ingress").is_err());
        assert!(parse_explain_query("url=%zz").is_err());
        assert!(parse_explain_query("url=x&bogus=1").is_err());
    }

    #[test]
    fn stats_text_from_prometheus() {
        let p = "# TYPE a counter\na{x=\"1\"} 3\nb 4\n";
        assert_eq!(envoy_stats_text(p), "a{x=\"1\"}: 3\nb: 4\n");
    }
}
