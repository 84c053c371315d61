//! Access logs through the real proxy: JSON lines parsed back, the text format matched, and TCP
//! connections logged.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::*;
use outrider_test_support::servers::TestServer;

/// Polls `path` until it holds at least `n` lines (the writer thread flushes asynchronously).
async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path) {
            let l: Vec<String> = text.lines().map(str::to_string).collect();
            if l.len() >= n {
                return l;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("access log {} never reached {n} lines", path.display());
}

fn client_with_log(backends: &[&str], log_path: &str, format: &str) -> String {
    format!(
        "meshName: m\nvirtualNodeName: {CLIENT}\nspec:\n  backends: [{}]\n  listeners: []\n  logging:\n    accessLog:\n      file:\n        path: {log_path}\n{format}",
        backends
            .iter()
            .map(|b| format!("{{virtualService: {{virtualServiceName: {b}}}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[tokio::test]
async fn json_access_log_lines_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.json");
    let up = TestServer::http("web");
    let format = "        format:\n          json:\n            - {key: code, value: \"%RESPONSE_CODE%\"}\n            - {key: method, value: \"%REQ(:METHOD)%\"}\n            - {key: path, value: \"%REQ(:PATH)%\"}\n            - {key: authority, value: \"%REQ(:AUTHORITY)%\"}\n            - {key: cluster, value: \"%UPSTREAM_CLUSTER%\"}\n            - {key: upstream, value: \"%UPSTREAM_HOST%\"}\n            - {key: flags, value: \"%RESPONSE_FLAGS%\"}\n            - {key: sent, value: \"%BYTES_SENT%\"}\n            - {key: id, value: \"%REQ(X-REQUEST-ID)%\"}\n            - {key: protocol, value: \"%PROTOCOL%\"}\n";
    let spec = stream(&[
        mesh("DROP_ALL"),
        client_with_log(&["web.local"], path.to_str().unwrap(), format),
        local_node("web", up.addr().port(), "http"),
        service_node("web.local", "web"),
    ]);
    let proxy = start(&spec).await;
    let egress = proxy.addrs().egress;
    let mut h1 = H1::connect(egress).await;
    let ok = h1.get("web.local", "/hello?x=1").await;
    assert_eq!(ok.status, 200);
    let missing = h1.get("nowhere.local", "/").await;
    assert_eq!(missing.status, 404);
    let mut h2 = H2::connect(egress).await;
    let ok2 = h2.send(h2_request("web.local", "/two", &[])).await;
    assert_eq!(ok2.status, 200);

    let got = lines(&path, 3).await;
    let rows: Vec<serde_json::Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &rows[0];
    assert_eq!(first["code"], 200);
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/hello?x=1");
    assert_eq!(first["authority"], "web.local");
    assert_eq!(
        first["cluster"],
        format!("cds_egress_m_web_http_{}", up.addr().port())
    );
    assert_eq!(first["upstream"], up.addr().to_string());
    assert_eq!(first["sent"], 4); // "web\n"
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["id"].as_str().unwrap().len(), 36);
    let nr = &rows[1];
    assert_eq!(nr["code"], 404);
    assert_eq!(nr["flags"], "NR");
    assert_eq!(rows[2]["protocol"], "HTTP/2");
    assert_eq!(rows[2]["path"], "/two");
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn default_text_format_and_unknown_operator() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let up = TestServer::http("web");
    let spec = stream(&[
        mesh("DROP_ALL"),
        client_with_log(&["web.local"], path.to_str().unwrap(), ""),
        local_node("web", up.addr().port(), "http"),
        service_node("web.local", "web"),
    ]);
    let proxy = start(&spec).await;
    let mut h1 = H1::connect(proxy.addrs().egress).await;
    assert_eq!(h1.get("web.local", "/text").await.status, 200);
    let got = lines(&path, 1).await;
    // Envoy's default format: [START] "GET /text HTTP/1.1" 200 - 0 4 ...
    let line = &got[0];
    assert!(line.starts_with('['), "{line}");
    assert!(line.contains("\"GET /text HTTP/1.1\" 200 - 0 4 "), "{line}");
    assert!(line.contains("\"web.local\""), "{line}");
    assert!(line.contains(&format!("\"{}\"", up.addr())), "{line}");
    proxy.shutdown(Duration::from_secs(1)).await;

    // An unknown command operator is a validation error naming the field.
    let bad = stream(&[
        mesh("DROP_ALL"),
        client_with_log(
            &["web.local"],
            "/dev/null",
            "        format:\n          text: \"%NOT_AN_OPERATOR%\"\n",
        ),
        local_node("web", 9, "http"),
        service_node("web.local", "web"),
    ]);
    let sel = outrider_config::Selector {
        mesh: None,
        node: Some(CLIENT.into()),
        gateway: None,
    };
    let problems = outrider_config::build_from_str("bad.yaml", &bad, &sel).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.path == "spec.logging.accessLog.file.format.text"
                && p.reason.contains("NOT_AN_OPERATOR")),
        "{problems:#?}"
    );
}
