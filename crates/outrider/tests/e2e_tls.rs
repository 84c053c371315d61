//! End to end: listener TLS (STRICT, PERMISSIVE, mTLS with SAN matching) and TLS origination
//! from a backend's client policy, with certificates made at run time; curl against each
//! listener kind when curl is installed; mTLS between two proxies; untrusted, wrong-SAN and
//! expired certificates refused on both sides.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{H1, h1_request, mesh, start, stream};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use outrider_test_support::servers::TestServer;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};

const GRACE: Duration = Duration::from_millis(200);

/// A CA and the directory its PEM files are written to.
struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subject names: OpenSSL (curl) takes a leaf whose subject equals its issuer
        // for self-signed, and rcgen gives every certificate the same default name.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "outrider test CA");
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> String {
        self.path("ca.pem")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Writes `<name>.pem` and `<name>.key` for a leaf with `san`; returns both paths.
    fn leaf(&self, name: &str, san: &str) -> (String, String) {
        self.leaf_with(name, san, false)
    }

    /// Like [`Pki::leaf`]; `expired` makes a certificate valid only during 2020.
    fn leaf_with(&self, name: &str, san: &str, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, san);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }

    fn client_config(&self, cert: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots());
        let cfg = match cert {
            Some((c, k)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(c)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(k).unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        Arc::new(cfg)
    }
}

/// One HTTP/1.1 GET over TLS; Err when the handshake or the exchange fails.
async fn tls_get(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<(StatusCode, Option<String>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = tx
        .send_request(h1_request(Method::GET, sni, "/tls", &[]))
        .await
        .map_err(|e| e.to_string())?;
    let by = resp
        .headers()
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((resp.status(), by))
}

fn listener_tls(mode: &str, cert: &(String, String), validation: &str) -> String {
    format!(
        "tls: {{mode: {mode}, certificate: {{file: {{certificateChain: {}, privateKey: {}}}}}{validation}}}",
        cert.0, cert.1
    )
}

/// The client node with one listener toward `app_port` and `tls` on it.
fn tls_client(app_port: u16, tls: &str) -> String {
    format!(
        "meshName: m\nvirtualNodeName: client\nspec:\n  listeners:\n    - portMapping: {{port: {app_port}, protocol: http}}\n      {tls}\n  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_listener_terminates_tls_and_refuses_plaintext() {
    let pki = Pki::new();
    let cert = pki.leaf("server", "client.local");
    let app = TestServer::http("app");
    let spec = stream(&[
        mesh("DROP_ALL"),
        tls_client(app.addr().port(), &listener_tls("STRICT", &cert, "")),
    ]);
    let proxy = start(&spec).await;
    let ingress = proxy.addrs().ingress;
    let r = tls_get(ingress, pki.client_config(None), "client.local").await;
    assert_eq!(r.unwrap(), (StatusCode::OK, Some("app".to_string())));
    // Plaintext on a STRICT listener: the handshake fails and no HTTP answer comes back.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let tcp = TcpStream::connect(ingress).await.unwrap();
        let (mut tx, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        tx.send_request(h1_request(Method::GET, "client.local", "/", &[]))
            .await
    })
    .await
    .unwrap();
    assert!(plain.is_err(), "plaintext got an answer: {plain:?}");
    // The proxy still serves TLS clients after the refusal.
    let r = tls_get(ingress, pki.client_config(None), "client.local").await;
    assert_eq!(r.unwrap().0, StatusCode::OK);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_listener_serves_tls_and_plaintext() {
    let pki = Pki::new();
    let cert = pki.leaf("server", "client.local");
    let app = TestServer::http("app");
    let spec = stream(&[
        mesh("DROP_ALL"),
        tls_client(app.addr().port(), &listener_tls("PERMISSIVE", &cert, "")),
    ]);
    let proxy = start(&spec).await;
    let ingress = proxy.addrs().ingress;
    let r = tls_get(ingress, pki.client_config(None), "client.local").await;
    assert_eq!(r.unwrap(), (StatusCode::OK, Some("app".to_string())));
    let mut plain = H1::connect(ingress).await;
    let r = plain.get("client.local", "/plain").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("app")));
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_requires_a_trusted_client_with_a_matching_san() {
    let pki = Pki::new();
    let cert = pki.leaf("server", "client.local");
    let good = pki.leaf("good", "good.client");
    let bad = pki.leaf("bad", "bad.client");
    let other = Pki::new();
    let stranger = other.leaf("stranger", "good.client");
    let validation = format!(
        ", validation: {{trust: {{file: {{certificateChain: {}}}}}, subjectAlternativeNames: {{match: {{exact: [good.client]}}}}}}",
        pki.ca()
    );
    let app = TestServer::http("app");
    let spec = stream(&[
        mesh("DROP_ALL"),
        tls_client(
            app.addr().port(),
            &listener_tls("STRICT", &cert, &validation),
        ),
    ]);
    let proxy = start(&spec).await;
    let ingress = proxy.addrs().ingress;
    let ok = tls_get(ingress, pki.client_config(Some(good)), "client.local").await;
    assert_eq!(ok.unwrap().0, StatusCode::OK);
    let no_cert = tls_get(ingress, pki.client_config(None), "client.local").await;
    assert!(no_cert.is_err(), "{no_cert:?}");
    let wrong_san = tls_get(ingress, pki.client_config(Some(bad)), "client.local").await;
    assert!(wrong_san.is_err(), "{wrong_san:?}");
    let untrusted = tls_get(ingress, pki.client_config(Some(stranger)), "client.local").await;
    assert!(untrusted.is_err(), "{untrusted:?}");
    proxy.shutdown(GRACE).await;
}

/// An HTTPS upstream answering 200 with the SNI it saw, asking for a client certificate from
/// `pki` when `mtls`.
async fn tls_upstream(pki: &Pki, san: &str, mtls: bool) -> std::net::SocketAddr {
    let cert = pki.leaf(&format!("up-{san}"), san);
    tls_upstream_with(cert, mtls.then(|| pki.roots())).await
}

/// An HTTPS upstream serving `(c, k)`, asking for a client certificate trusted by
/// `client_roots` when given.
async fn tls_upstream_with(
    (c, k): (String, String),
    client_roots: Option<rustls::RootCertStore>,
) -> std::net::SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = if let Some(roots) = client_roots {
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        b.with_client_cert_verifier(v)
    } else {
        b.with_no_client_auth()
    };
    let mut cfg = b
        .with_single_cert(
            CertificateDer::pem_file_iter(c)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            PrivateKeyDer::from_pem_file(k).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let svc = hyper::service::service_fn(move |_req| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("x-sni", sni)
                                .body(Full::new(Bytes::from_static(b"secure")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn tls_backend_spec(up_port: u16, policy: &str) -> String {
    stream(&[
        mesh("DROP_ALL"),
        format!(
            "meshName: m\nvirtualNodeName: client\nspec:\n  backends:\n    - virtualService: {{virtualServiceName: secure.local, {policy}}}\n  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}\n"
        ),
        common::local_node("up", up_port, "http"),
        common::service_node("secure.local", "up"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_policy_originates_mtls_with_sni_and_san_check() {
    let pki = Pki::new();
    let up = tls_upstream(&pki, "up.mesh.internal", true).await;
    let (cc, ck) = pki.leaf("client-cert", "client.mesh.internal");
    let policy = |san: &str| {
        format!(
            "clientPolicy: {{tls: {{certificate: {{file: {{certificateChain: {cc}, privateKey: {ck}}}}}, validation: {{trust: {{file: {{certificateChain: {}}}}}, subjectAlternativeNames: {{match: {{exact: [{san}]}}}}}}}}}}",
            pki.ca()
        )
    };
    let proxy = start(&tls_backend_spec(up.port(), &policy("up.mesh.internal"))).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("secure.local", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-sni"), Some("secure.local"));
    assert_eq!(r.body, Bytes::from_static(b"secure"));
    proxy.shutdown(GRACE).await;

    // A SAN list the upstream's certificate does not match: the handshake fails, 503.
    let proxy = start(&tls_backend_spec(up.port(), &policy("someone.else"))).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let r = c.get("secure.local", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_policy_enforce_false_and_other_ports_stay_plaintext() {
    let pki = Pki::new();
    let plain = TestServer::http("plain");
    for extra in ["enforce: false, ", "ports: [1], "] {
        let policy = format!(
            "clientPolicy: {{tls: {{{extra}validation: {{trust: {{file: {{certificateChain: {}}}}}}}}}}}",
            pki.ca()
        );
        let proxy = start(&tls_backend_spec(plain.addr().port(), &policy)).await;
        let mut c = H1::connect(proxy.addrs().egress).await;
        let r = c.get("secure.local", "/").await;
        assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("plain")));
        proxy.shutdown(GRACE).await;
    }
}

/// The client policy of a backend: `cert` for mTLS when given, trust in `ca`, and `san`.
fn client_policy(cert: Option<&(String, String)>, ca: &str, san: &str) -> String {
    let certificate = cert.map_or(String::new(), |(c, k)| {
        format!("certificate: {{file: {{certificateChain: {c}, privateKey: {k}}}}}, ")
    });
    format!(
        "clientPolicy: {{tls: {{{certificate}validation: {{trust: {{file: {{certificateChain: {ca}}}}}, subjectAlternativeNames: {{match: {{exact: [{san}]}}}}}}}}}}"
    )
}

/// The status the egress listener of a proxy with `policy` toward `up` answers.
async fn status_through_policy(up: std::net::SocketAddr, policy: &str) -> StatusCode {
    let proxy = start(&tls_backend_spec(up.port(), policy)).await;
    let mut c = H1::connect(proxy.addrs().egress).await;
    let status = c.get("secure.local", "/").await.status;
    proxy.shutdown(GRACE).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_policy_refuses_untrusted_and_expired_upstreams() {
    let pki = Pki::new();
    let other = Pki::new();
    let san = "up.mesh.internal";
    let trusted = tls_upstream(&pki, san, false).await;
    let policy = client_policy(None, &pki.ca(), san);
    assert_eq!(
        status_through_policy(trusted, &policy).await,
        StatusCode::OK
    );
    let untrusted = tls_upstream_with(other.leaf("up-other", san), None).await;
    assert_eq!(
        status_through_policy(untrusted, &policy).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let expired = tls_upstream_with(pki.leaf_with("up-expired", san, true), None).await;
    assert_eq!(
        status_through_policy(expired, &policy).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_refuses_an_expired_client_certificate() {
    let pki = Pki::new();
    let cert = pki.leaf("server", "client.local");
    let good = pki.leaf("good", "good.client");
    let expired = pki.leaf_with("expired", "good.client", true);
    let validation = format!(
        ", validation: {{trust: {{file: {{certificateChain: {}}}}}, subjectAlternativeNames: {{match: {{exact: [good.client]}}}}}}",
        pki.ca()
    );
    let app = TestServer::http("app");
    let spec = stream(&[
        mesh("DROP_ALL"),
        tls_client(
            app.addr().port(),
            &listener_tls("STRICT", &cert, &validation),
        ),
    ]);
    let proxy = start(&spec).await;
    let ingress = proxy.addrs().ingress;
    let r = tls_get(ingress, pki.client_config(Some(expired)), "client.local").await;
    assert!(r.is_err(), "{r:?}");
    let ok = tls_get(ingress, pki.client_config(Some(good)), "client.local").await;
    assert_eq!(ok.unwrap().0, StatusCode::OK);
    proxy.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_two_proxies() {
    let pki = Pki::new();
    // Proxy B: a mutual-TLS listener in front of its app, accepting only `a.client`.
    let b_cert = pki.leaf("b", "b.server");
    let validation = format!(
        ", validation: {{trust: {{file: {{certificateChain: {}}}}}, subjectAlternativeNames: {{match: {{exact: [a.client]}}}}}}",
        pki.ca()
    );
    let app = TestServer::http("app-b");
    let b = start(&stream(&[
        mesh("DROP_ALL"),
        tls_client(
            app.addr().port(),
            &listener_tls("STRICT", &b_cert, &validation),
        ),
    ]))
    .await;
    let b_port = b.addrs().ingress.port();
    // Proxy A: a client policy toward B with its own certificate, checking B's SAN.
    let a_cert = pki.leaf("a", "a.client");
    let a = start(&tls_backend_spec(
        b_port,
        &client_policy(Some(&a_cert), &pki.ca(), "b.server"),
    ))
    .await;
    let mut c = H1::connect(a.addrs().egress).await;
    let r = c.get("secure.local", "/through-b").await;
    assert_eq!((r.status, r.served_by()), (StatusCode::OK, Some("app-b")));
    assert_eq!(app.last_request().unwrap().uri.path(), "/through-b");
    a.shutdown(GRACE).await;
    // Without a client certificate, B refuses A's handshake.
    let a = start(&tls_backend_spec(
        b_port,
        &client_policy(None, &pki.ca(), "b.server"),
    ))
    .await;
    let mut c = H1::connect(a.addrs().egress).await;
    assert_eq!(
        c.get("secure.local", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    a.shutdown(GRACE).await;
    b.shutdown(GRACE).await;
}

/// `curl` over HTTPS (or HTTP when `ca` is None) to `client.local` on `addr`; the status code,
/// or None when the exchange failed. Extra arguments go before the URL.
async fn curl(addr: std::net::SocketAddr, ca: Option<&str>, extra: &[&str]) -> Option<u16> {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let resolve = format!("client.local:{}:127.0.0.1", addr.port());
    let url = format!("{scheme}://client.local:{}/curl", addr.port());
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ])
    .args(["--resolve", &resolve]);
    if let Some(ca) = ca {
        cmd.args(["--cacert", ca]);
    }
    let out = cmd.args(extra).arg(&url).output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn curl_installed() -> bool {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("curl not installed: skipping the curl checks");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_against_strict_permissive_and_mutual_listeners() {
    if !curl_installed() {
        return;
    }
    let pki = Pki::new();
    let cert = pki.leaf("server", "client.local");
    let ca = pki.ca();
    let app = TestServer::http("app");
    let run = |tls: String| {
        let spec = stream(&[mesh("DROP_ALL"), tls_client(app.addr().port(), &tls)]);
        async move { start(&spec).await }
    };

    let strict = run(listener_tls("STRICT", &cert, "")).await;
    let addr = strict.addrs().ingress;
    assert_eq!(curl(addr, Some(&ca), &[]).await, Some(200));
    assert_eq!(
        curl(addr, None, &[]).await,
        None,
        "STRICT answered plaintext"
    );
    strict.shutdown(GRACE).await;

    let permissive = run(listener_tls("PERMISSIVE", &cert, "")).await;
    let addr = permissive.addrs().ingress;
    assert_eq!(curl(addr, Some(&ca), &[]).await, Some(200));
    assert_eq!(curl(addr, None, &[]).await, Some(200));
    permissive.shutdown(GRACE).await;

    let good = pki.leaf("good", "good.client");
    let bad = pki.leaf("bad", "bad.client");
    let validation = format!(
        ", validation: {{trust: {{file: {{certificateChain: {ca}}}}}, subjectAlternativeNames: {{match: {{exact: [good.client]}}}}}}"
    );
    let mutual = run(listener_tls("STRICT", &cert, &validation)).await;
    let addr = mutual.addrs().ingress;
    let with = |c: &(String, String)| {
        [
            "--cert".to_string(),
            c.0.clone(),
            "--key".to_string(),
            c.1.clone(),
        ]
    };
    let good_args = with(&good);
    let good_args: Vec<&str> = good_args.iter().map(String::as_str).collect();
    assert_eq!(curl(addr, Some(&ca), &good_args).await, Some(200));
    let bad_args = with(&bad);
    let bad_args: Vec<&str> = bad_args.iter().map(String::as_str).collect();
    assert_eq!(
        curl(addr, Some(&ca), &bad_args).await,
        None,
        "wrong SAN accepted"
    );
    assert_eq!(
        curl(addr, Some(&ca), &[]).await,
        None,
        "no client certificate accepted"
    );
    mutual.shutdown(GRACE).await;
}
