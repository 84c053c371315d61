#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use outrider_accesslog::{Format, FormatError, Record};

/// 2024-02-29T23:59:58.123Z.
fn start() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_709_251_198, 123_456_789)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(*k, HeaderValue::from_str(v).unwrap());
    }
    m
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn http_record<'a>(req: &'a HeaderMap, resp: &'a HeaderMap, trailers: &'a HeaderMap) -> Record<'a> {
    Record {
        method: Some("GET"),
        path: Some("/api/v1?x=1"),
        authority: Some("svc.local:8080"),
        scheme: Some("http"),
        protocol: Some("HTTP/1.1"),
        response_headers: Some(resp),
        response_trailers: Some(trailers),
        response_code: 200,
        response_flags: "UF,URX",
        bytes_received: 12,
        bytes_sent: 3456,
        duration: Duration::from_millis(42),
        request_duration: Some(Duration::from_millis(1)),
        response_duration: Some(Duration::from_micros(30_900)),
        upstream_host: Some(addr("10.0.0.7:9090")),
        upstream_cluster: Some("cds_egress_mesh_backend_http_8080"),
        downstream_remote: Some(addr("10.0.0.1:54321")),
        downstream_local: Some(addr("10.0.0.2:15001")),
        route_name: Some("backend-route"),
        upstream_transport_failure_reason: Some("connection refused"),
        connection_id: 77,
        ..Record::new(start(), req)
    }
}

fn render(pattern: &str, rec: &Record<'_>) -> String {
    let mut s = String::new();
    Format::text(pattern).unwrap().write(rec, &mut s);
    s
}

#[test]
fn every_operator_in_text() {
    let req = headers(&[
        ("user-agent", "curl/8.0"),
        ("x-request-id", "rid-1"),
        ("x-forwarded-for", "1.2.3.4"),
    ]);
    let resp = headers(&[
        ("x-envoy-upstream-service-time", "40"),
        ("content-type", "text/plain"),
    ]);
    let trailers = headers(&[("grpc-status", "14")]);
    let rec = http_record(&req, &resp, &trailers);
    let cases = [
        ("%START_TIME%", "2024-02-29T23:59:58.123Z"),
        (
            "%START_TIME(%Y-%m-%dT%H:%M:%S.%3f%z)%",
            "2024-02-29T23:59:58.123+0000",
        ),
        (
            "%REQ(:METHOD)% %REQ(:path)% %REQ(:AUTHORITY)% %REQ(:SCHEME)%",
            "GET /api/v1?x=1 svc.local:8080 http",
        ),
        ("%REQ(USER-AGENT)%", "curl/8.0"),
        ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/api/v1?x=1"),
        ("%REQ(USER-AGENT?:PATH)%", "curl/8.0"),
        ("%REQ(USER-AGENT):4%", "curl"),
        ("%REQ(:PATH):100%", "/api/v1?x=1"),
        ("%REQ(X-MISSING)%", "-"),
        ("%RESP(CONTENT-TYPE)%", "text/plain"),
        ("%RESP(X-MISSING?CONTENT-TYPE):4%", "text"),
        ("%TRAILER(GRPC-STATUS)%", "14"),
        ("%PROTOCOL%", "HTTP/1.1"),
        ("%RESPONSE_CODE%", "200"),
        ("%RESPONSE_FLAGS%", "UF,URX"),
        ("%BYTES_RECEIVED% %BYTES_SENT%", "12 3456"),
        (
            "%DURATION% %REQUEST_DURATION% %RESPONSE_DURATION%",
            "42 1 30",
        ),
        ("%UPSTREAM_HOST%", "10.0.0.7:9090"),
        ("%UPSTREAM_CLUSTER%", "cds_egress_mesh_backend_http_8080"),
        ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.0.0.1:54321"),
        ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.0.1"),
        ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.0.0.2:15001"),
        ("%REQ_ID%", "rid-1"),
        ("%ROUTE_NAME%", "backend-route"),
        ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "connection refused"),
        ("%CONNECTION_ID%", "77"),
        ("100%% done", "100% done"),
    ];
    for (pattern, want) in cases {
        assert_eq!(
            render(pattern, &rec),
            format!("{want}\n"),
            "pattern {pattern}"
        );
    }
    let host = render("%HOSTNAME%", &rec);
    assert!(!host.trim().is_empty());
}

#[test]
fn missing_values_print_a_dash_and_tcp_code_is_zero() {
    let req = HeaderMap::new();
    let rec = Record {
        downstream_remote: Some(addr("[::1]:4000")),
        ..Record::new(start(), &req)
    };
    let got = render(
        "%REQ(:METHOD)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_DURATION% \
         %RESP(X)% %TRAILER(X)% %UPSTREAM_HOST% %ROUTE_NAME% %REQ_ID% \
         %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        &rec,
    );
    assert_eq!(got, "- - 0 - - - - - - - [::1]:4000 ::1\n");
}

#[test]
fn envoy_default_format() {
    let req = headers(&[
        ("user-agent", "curl/8.0"),
        ("x-request-id", "rid-1"),
        ("x-forwarded-for", "1.2.3.4"),
    ]);
    let resp = headers(&[("x-envoy-upstream-service-time", "40")]);
    let trailers = HeaderMap::new();
    let rec = http_record(&req, &resp, &trailers);
    let mut s = String::new();
    Format::envoy_default().write(&rec, &mut s);
    assert_eq!(
        s,
        "[2024-02-29T23:59:58.123Z] \"GET /api/v1?x=1 HTTP/1.1\" 200 UF,URX 12 3456 42 40 \
         \"1.2.3.4\" \"curl/8.0\" \"rid-1\" \"svc.local:8080\" \"10.0.0.7:9090\"\n"
    );
}

#[test]
fn json_types_and_escaping() {
    let req = headers(&[("user-agent", "evil\"agent\\\t")]);
    let resp = HeaderMap::new();
    let trailers = HeaderMap::new();
    let mut rec = http_record(&req, &resp, &trailers);
    rec.request_duration = None;
    rec.route_name = Some("r\u{1}");
    let fields: Vec<(String, String)> = [
        ("start", "%START_TIME%"),
        ("code", "%RESPONSE_CODE%"),
        ("rx", "%BYTES_RECEIVED%"),
        ("tx", "%BYTES_SENT%"),
        ("dur", "%DURATION%"),
        ("req_dur", "%REQUEST_DURATION%"),
        ("resp_dur", "%RESPONSE_DURATION%"),
        ("cx", "%CONNECTION_ID%"),
        ("ua", "%REQ(USER-AGENT)%"),
        ("missing", "%REQ(X-NOPE)%"),
        ("mixed", "code=%RESPONSE_CODE% id=%REQ(X-NOPE)%"),
        ("up", "%UPSTREAM_HOST%"),
        ("route", "%ROUTE_NAME%"),
        ("quo\"te", "lit\n"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let f = Format::json(&fields).unwrap();
    assert!(f.is_json());
    let mut s = String::new();
    f.write(&rec, &mut s);
    assert!(s.ends_with("}\n"));
    assert_eq!(s.matches('\n').count(), 1);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["start"], "2024-02-29T23:59:58.123Z");
    assert_eq!(v["code"], 200);
    assert_eq!(v["rx"], 12);
    assert_eq!(v["tx"], 3456);
    assert_eq!(v["dur"], 42);
    assert!(v["req_dur"].is_null());
    assert_eq!(v["resp_dur"], 30);
    assert_eq!(v["cx"], 77);
    assert_eq!(v["ua"], "evil\"agent\\\t");
    assert_eq!(v["route"], "r\u{1}");
    assert!(v["missing"].is_null());
    assert_eq!(v["mixed"], "code=200 id=-");
    assert_eq!(v["up"], "10.0.0.7:9090");
    assert_eq!(v["quo\"te"], "lit\n");
    // Key order is the configured order.
    assert!(s.starts_with("{\"start\":"));
    assert!(s.contains("\\u0001"));
}

#[test]
fn unknown_and_malformed_operators_are_errors() {
    assert_eq!(
        Format::text("ok %NOPE% x").unwrap_err(),
        FormatError::Unknown {
            operator: "NOPE".into(),
            position: 3
        }
    );
    for bad in [
        "%REQ(X%",
        "%RESPONSE_CODE",
        "50% off",
        "%REQ%",
        "%REQ(X):abc%",
        "%DURATION(X)%",
        "%DURATION:3%",
        "%START_TIME(%Q)%",
        "%RESP(:PATH)%",
    ] {
        match Format::text(bad) {
            Err(FormatError::Malformed { position, .. }) => {
                assert!(position < bad.len(), "{bad}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let err = Format::json(&[("a".into(), "%OOPS%".into())]).unwrap_err();
    match err {
        FormatError::InJsonKey { key, inner } => {
            assert_eq!(key, "a");
            assert!(
                matches!(*inner, FormatError::Unknown { ref operator, position: 0 } if operator == "OOPS")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err_text("x %BAD% y").contains("BAD"));
}

fn err_text(p: &str) -> String {
    Format::text(p).unwrap_err().to_string()
}

#[test]
fn write_appends_without_touching_existing_output() {
    let req = HeaderMap::new();
    let rec = Record::new(start(), &req);
    let f = Format::text("%RESPONSE_CODE%\n").unwrap();
    let mut s = String::from("prev\n");
    f.write(&rec, &mut s);
    f.write(&rec, &mut s);
    assert_eq!(s, "prev\n0\n0\n");
}

/// Found by the `access_log_format` fuzzer: a multi-byte character right after `%` must give a
/// clean error, not a panic on a character boundary.
#[test]
fn non_ascii_after_percent_is_an_error_not_a_panic() {
    for pattern in ["R%\u{6ec}%R%", "%é", "%\u{1F600}%", "a%ß(x)%"] {
        assert!(
            outrider_accesslog::Format::text(pattern).is_err(),
            "{pattern:?}"
        );
    }
}
