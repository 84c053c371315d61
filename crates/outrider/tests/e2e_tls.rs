//! End to end: listener TLS (STRICT, PERMISSIVE, mTLS with SAN matching) and TLS origination
//! from a backend's client policy, with certificates made at run time.

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
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
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
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
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
    let (c, k) = pki.leaf(&format!("up-{san}"), san);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = if mtls {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(pki.roots()),
            provider,
        )
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
