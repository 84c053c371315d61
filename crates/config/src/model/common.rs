//! Shapes shared by several resources: durations, port mappings, string matchers, TLS, logging.

use serde::Deserialize;

/// `portMapping.protocol` (and health-check protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

/// `Duration.unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DurationUnit {
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Millis,
}

/// App Mesh `Duration`: `{unit, value}`. Both are optional in the API; a missing unit is
/// reported by validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Duration {
    pub unit: Option<DurationUnit>,
    pub value: Option<i64>,
}

/// `PortMapping`: `{port, protocol}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub port: i64,
    pub protocol: PortProtocol,
}

/// `MatchRange`: `start <= n < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchRange {
    pub start: i64,
    pub end: i64,
}

/// `HeaderMatchMethod` / `GrpcRouteMetadataMatchMethod`: exactly one matcher.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderMatchMethod {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(String),
    Range(MatchRange),
}

/// `HttpRouteHeader` / `GrpcRouteMetadata` / the cookie extension: `{name, match, invert}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatchSpec {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: Option<HeaderMatchMethod>,
    pub invert: Option<bool>,
}

/// `HttpPathMatch`: `{exact | regex}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    pub exact: Option<String>,
    pub regex: Option<String>,
}

/// `QueryParameterMatch`: `{exact}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParameterMatch {
    pub exact: Option<String>,
}

/// `HttpQueryParameter`: `{name, match}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpQueryParameter {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: Option<QueryParameterMatch>,
}

/// `GatewayRouteHostnameMatch`: `{exact | suffix}` (also Outrider's route-match extension).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameMatch {
    pub exact: Option<String>,
    pub suffix: Option<String>,
}

/// `HttpMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

/// `HttpScheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpScheme {
    Http,
    Https,
}

/// `IpPreference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum IpPreferenceSpec {
    #[serde(rename = "IPv6_PREFERRED")]
    Ipv6Preferred,
    #[serde(rename = "IPv4_PREFERRED")]
    Ipv4Preferred,
    #[serde(rename = "IPv4_ONLY")]
    Ipv4Only,
    #[serde(rename = "IPv6_ONLY")]
    Ipv6Only,
}

/// `ListenerTlsMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Strict,
    Permissive,
    Disabled,
}

/// `ListenerTlsFileCertificate` / `ClientTlsCertificate.file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFileCertificate {
    pub certificate_chain: String,
    pub private_key: String,
}

/// `ListenerTlsSdsCertificate` and the `sds` trusts: `{secretName}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSds {
    pub secret_name: String,
}

/// `ListenerTlsAcmCertificate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsAcmCertificate {
    pub certificate_arn: String,
}

/// `ListenerTlsCertificate`: a server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerTlsCertificate {
    Acm(TlsAcmCertificate),
    File(TlsFileCertificate),
    Sds(TlsSds),
}

/// `ClientTlsCertificate`: a client certificate (no ACM).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientTlsCertificate {
    File(TlsFileCertificate),
    Sds(TlsSds),
}

/// `TlsValidationContextFileTrust`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFileTrust {
    pub certificate_chain: String,
}

/// `TlsValidationContextAcmTrust`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsAcmTrust {
    pub certificate_authority_arns: Vec<String>,
}

/// `TlsValidationContextTrust` (client side: acm, file or sds).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TlsTrust {
    Acm(TlsAcmTrust),
    File(TlsFileTrust),
    Sds(TlsSds),
}

/// `ListenerTlsValidationContextTrust` (server side: file or sds).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerTlsTrust {
    File(TlsFileTrust),
    Sds(TlsSds),
}

/// `SubjectAlternativeNameMatchers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SanMatchers {
    pub exact: Vec<String>,
}

/// `SubjectAlternativeNames`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectAlternativeNames {
    #[serde(rename = "match")]
    pub match_: SanMatchers,
}

/// `TlsValidationContext` (client policy).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsValidationContext {
    pub subject_alternative_names: Option<SubjectAlternativeNames>,
    pub trust: TlsTrust,
}

/// `ListenerTlsValidationContext` (listener mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTlsValidationContext {
    pub subject_alternative_names: Option<SubjectAlternativeNames>,
    pub trust: ListenerTlsTrust,
}

/// `ListenerTls`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    pub certificate: ListenerTlsCertificate,
    pub mode: TlsMode,
    pub validation: Option<ListenerTlsValidationContext>,
}

/// `ClientPolicyTls`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientPolicyTls {
    pub certificate: Option<ClientTlsCertificate>,
    /// Default is true.
    pub enforce: Option<bool>,
    #[serde(default)]
    pub ports: Vec<i64>,
    pub validation: TlsValidationContext,
}

/// `ClientPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientPolicy {
    pub tls: Option<ClientPolicyTls>,
}

/// `BackendDefaults` / `VirtualGatewayBackendDefaults`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendDefaults {
    pub client_policy: Option<ClientPolicy>,
}

/// `JsonFormatRef`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonFormatRef {
    pub key: String,
    pub value: String,
}

/// `LoggingFormat`: `{json: [...]} | {text: "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoggingFormat {
    Json(Vec<JsonFormatRef>),
    Text(String),
}

/// `FileAccessLog`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLog {
    pub format: Option<LoggingFormat>,
    pub path: String,
}

/// `AccessLog`: `{file: ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccessLogSpec {
    File(FileAccessLog),
}

/// `Logging`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logging {
    pub access_log: Option<AccessLogSpec>,
}

/// `HttpTimeout` / `GrpcTimeout`: `{perRequest, idle}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTimeout {
    pub per_request: Option<Duration>,
    pub idle: Option<Duration>,
}

/// `TcpTimeout`: `{idle}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpTimeout {
    pub idle: Option<Duration>,
}

/// `HealthCheckPolicy` (node and gateway listeners).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckPolicy {
    pub healthy_threshold: i64,
    pub interval_millis: i64,
    pub path: Option<String>,
    pub port: Option<i64>,
    pub protocol: PortProtocol,
    pub timeout_millis: i64,
    pub unhealthy_threshold: i64,
}
