//! Reading resource files: JSON or YAML, one resource, an array, or a YAML stream, in either the
//! `describe-*` output shape or the `create-* --cli-input-json` input shape.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Problem;
use crate::import::{self, Imports};
use crate::model::{
    GatewayRouteSpec, MeshSpec, RouteSpec, VirtualGatewaySpec, VirtualNodeSpec, VirtualRouterSpec,
    VirtualServiceSpec,
};

/// File extensions read from a directory, in lower case.
const CONFIG_EXTENSIONS: [&str; 3] = ["json", "yaml", "yml"];

/// The kind of an App Mesh resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Mesh,
    VirtualService,
    VirtualNode,
    VirtualRouter,
    Route,
    VirtualGateway,
    GatewayRoute,
}

/// A resource's spec, by kind.
// Built once per load and matched everywhere; boxing variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Mesh(MeshSpec),
    VirtualService(VirtualServiceSpec),
    VirtualNode(VirtualNodeSpec),
    VirtualRouter(VirtualRouterSpec),
    Route(RouteSpec),
    VirtualGateway(VirtualGatewaySpec),
    GatewayRoute(GatewayRouteSpec),
}

/// One loaded resource with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The file it was read from (or the name given to [`crate::build_from_str`]).
    pub file: String,
    /// `meshName`, when given.
    pub mesh: Option<String>,
    /// The resource's own name (`virtualNodeName`, `routeName`, ...; the mesh name for a Mesh).
    pub name: String,
    /// `virtualRouterName` of a Route, `virtualGatewayName` of a GatewayRoute.
    pub parent: Option<String>,
    /// The parsed `spec` (an absent Mesh or VirtualService spec is the empty spec).
    pub spec: Spec,
    /// Stable hash of the resource's canonical content.
    pub digest: u64,
}

/// Every resource that parsed, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// In load order: paths as given, files by name, documents and array items in order.
    pub items: Vec<Resource>,
}

/// What [`load`] read: the resources that parsed and a problem for each one that did not.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every resource that parsed.
    pub resources: Resources,
    /// One error per file that did not parse and per resource that did not.
    pub problems: Vec<Problem>,
}

/// The envelope around `spec` in both CLI shapes. Unknown keys are refused so that a typo such as
/// `specs` is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    mesh_name: Option<String>,
    #[serde(rename = "meshOwner")]
    _mesh_owner: Option<Value>,
    virtual_service_name: Option<String>,
    virtual_node_name: Option<String>,
    virtual_router_name: Option<String>,
    route_name: Option<String>,
    virtual_gateway_name: Option<String>,
    gateway_route_name: Option<String>,
    #[serde(default)]
    spec: Value,
    #[serde(rename = "metadata")]
    _metadata: Option<Value>,
    #[serde(rename = "status")]
    _status: Option<Value>,
    #[serde(rename = "tags")]
    _tags: Option<Value>,
    #[serde(rename = "clientToken")]
    _client_token: Option<Value>,
}

/// FNV-1a, 64 bits: stable across runs and platforms, unlike `std`'s hasher.
pub(crate) struct Fnv(u64);

impl Kind {
    /// The API's name of the kind: `VirtualNode`, `Route`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::VirtualService => "VirtualService",
            Kind::VirtualNode => "VirtualNode",
            Kind::VirtualRouter => "VirtualRouter",
            Kind::Route => "Route",
            Kind::VirtualGateway => "VirtualGateway",
            Kind::GatewayRoute => "GatewayRoute",
        }
    }

    /// The key of the `describe-*` output shape: `virtualNode`, `route`, ...
    fn describe_key(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualService => "virtualService",
            Kind::VirtualNode => "virtualNode",
            Kind::VirtualRouter => "virtualRouter",
            Kind::Route => "route",
            Kind::VirtualGateway => "virtualGateway",
            Kind::GatewayRoute => "gatewayRoute",
        }
    }

    /// The envelope key holding the resource's own name.
    pub fn name_key(self) -> &'static str {
        match self {
            Kind::Mesh => "meshName",
            Kind::VirtualService => "virtualServiceName",
            Kind::VirtualNode => "virtualNodeName",
            Kind::VirtualRouter => "virtualRouterName",
            Kind::Route => "routeName",
            Kind::VirtualGateway => "virtualGatewayName",
            Kind::GatewayRoute => "gatewayRouteName",
        }
    }

    const ALL: [Kind; 7] = [
        Kind::Mesh,
        Kind::VirtualService,
        Kind::VirtualNode,
        Kind::VirtualRouter,
        Kind::Route,
        Kind::VirtualGateway,
        Kind::GatewayRoute,
    ];

    /// The kind of a create-shape object, from its most specific name key.
    fn from_create_keys(obj: &serde_json::Map<String, Value>) -> Option<Kind> {
        // Most specific first: a Route also carries `virtualRouterName`.
        [
            Kind::GatewayRoute,
            Kind::Route,
            Kind::VirtualGateway,
            Kind::VirtualRouter,
            Kind::VirtualNode,
            Kind::VirtualService,
            Kind::Mesh,
        ]
        .into_iter()
        .find(|k| obj.contains_key(k.name_key()))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Spec {
    /// The kind of resource this spec belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Mesh(_) => Kind::Mesh,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::VirtualNode(_) => Kind::VirtualNode,
            Spec::VirtualRouter(_) => Kind::VirtualRouter,
            Spec::Route(_) => Kind::Route,
            Spec::VirtualGateway(_) => Kind::VirtualGateway,
            Spec::GatewayRoute(_) => Kind::GatewayRoute,
        }
    }
}

impl Resource {
    /// The kind of this resource.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// An error about `path` in this resource.
    pub fn error(&self, path: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem::error(&self.file, self.kind().as_str(), &self.name, path, reason)
    }

    /// A warning about `path` in this resource.
    pub fn warning(&self, path: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem::warning(&self.file, self.kind().as_str(), &self.name, path, reason)
    }
}

impl Resources {
    /// Resources of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.items.iter().filter(move |r| r.kind() == kind)
    }

    /// Every distinct mesh name: explicit `meshName`s and Mesh resources, sorted.
    pub fn mesh_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .items
            .iter()
            .filter_map(|r| {
                if r.kind() == Kind::Mesh {
                    Some(r.name.as_str())
                } else {
                    r.mesh.as_deref()
                }
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The one mesh the files hold, if they hold exactly one.
    pub fn single_mesh(&self) -> Option<&str> {
        match self.mesh_names().as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Stable hash of every resource, independent of file order, as 16 hex digits.
    pub fn digest(&self) -> String {
        let mut digests: Vec<u64> = self.items.iter().map(|r| r.digest).collect();
        digests.sort_unstable();
        let mut h = Fnv::new();
        for d in digests {
            h.write(&d.to_le_bytes());
        }
        format!("{:016x}", h.0)
    }
}

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> Fnv {
        Fnv(Fnv::OFFSET)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(Fnv::PRIME);
        }
    }

    /// Hashes a JSON value with object keys in sorted order, so key order does not matter.
    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.write(b"n"),
            Value::Bool(b) => self.write(if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                self.write(b"#");
                self.write(n.to_string().as_bytes());
            }
            Value::String(s) => {
                self.write(b"s");
                self.write(&(s.len() as u64).to_le_bytes());
                self.write(s.as_bytes());
            }
            Value::Array(items) => {
                self.write(b"[");
                for item in items {
                    self.value(item);
                }
                self.write(b"]");
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                self.write(b"{");
                for k in keys {
                    self.write(&(k.len() as u64).to_le_bytes());
                    self.write(k.as_bytes());
                    if let Some(v) = map.get(k) {
                        self.value(v);
                    }
                }
                self.write(b"}");
            }
        }
    }
}

impl Loaded {
    fn file_problem(&mut self, file: &str, reason: impl Into<String>) {
        self.problems
            .push(Problem::error(file, "-", "-", "-", reason));
    }
}

/// Reads every path: a file, or a directory whose `*.json`, `*.yaml` and `*.yml` files are read
/// in name order (not recursively). Every problem is collected; nothing stops at the first.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut out = Loaded::default();
    let mut imports = Imports::default();
    for path in paths {
        if path.is_dir() {
            match config_files(path) {
                Ok(files) => {
                    for file in files {
                        load_file(&file, &mut out, &mut imports);
                    }
                }
                Err(e) => out.file_problem(
                    &path.display().to_string(),
                    format!("cannot read directory: {e}"),
                ),
            }
        } else {
            load_file(path, &mut out, &mut imports);
        }
    }
    imports.finish(&mut out);
    out
}

/// Parses resources from text already in memory. `name` is used in problems and, by its
/// extension, picks JSON or YAML (YAML when unknown and the text does not start like JSON).
pub fn load_str(name: &str, text: &str) -> Loaded {
    let mut out = Loaded::default();
    let mut imports = Imports::default();
    load_text(name, text, &mut out, &mut imports);
    imports.finish(&mut out);
    out
}

fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(path: &Path, out: &mut Loaded, imports: &mut Imports) {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_text(&name, &text, out, imports),
        Err(e) => out.file_problem(&name, format!("cannot read: {e}")),
    }
}

fn load_text(name: &str, text: &str, out: &mut Loaded, imports: &mut Imports) {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let json = match ext.as_deref() {
        Some("json") => true,
        Some("yaml" | "yml") => false,
        _ => text.trim_start().starts_with(['{', '[']),
    };
    let documents = if json {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => vec![v],
            Err(e) => {
                out.file_problem(
                    name,
                    format!(
                        "invalid JSON at line {} column {}: {e}",
                        e.line(),
                        e.column()
                    ),
                );
                return;
            }
        }
    } else {
        // YAML 1.2 booleans only: under YAML 1.1 rules a node named `n` or `no` would read as false.
        let options = serde_saphyr::options! { strict_booleans: true };
        // Plain parsing drops tags, so CloudFormation's `!Ref` and friends need their own pass.
        let parsed = if import::has_short_forms(text) {
            import::parse_yaml(text, options)
        } else {
            serde_saphyr::from_multiple_with_options::<Value>(text, options)
        };
        match parsed {
            Ok(docs) => docs,
            Err(e) => {
                out.file_problem(name, format!("invalid YAML: {e}"));
                return;
            }
        }
    };
    for doc in documents {
        match doc {
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    if !imports.take(name, &item, out) {
                        push_resource(name, &item, out);
                    }
                }
            }
            other => {
                if !imports.take(name, &other, out) {
                    push_resource(name, &other, out);
                }
            }
        }
    }
}

pub(crate) fn push_resource(file: &str, value: &Value, out: &mut Loaded) {
    match parse_resource(file, value) {
        Ok(r) => out.resources.items.push(r),
        Err(p) => out.problems.push(p),
    }
}

/// Parses one resource in either CLI shape.
fn parse_resource(file: &str, value: &Value) -> Result<Resource, Problem> {
    let Some(obj) = value.as_object() else {
        return Err(Problem::error(
            file,
            "-",
            "-",
            "-",
            "expected a resource object",
        ));
    };
    // describe shape: a single key naming the kind, holding the resource.
    let described = match obj.iter().next() {
        Some((key, inner)) if obj.len() == 1 && inner.is_object() => Kind::ALL
            .into_iter()
            .find(|k| k.describe_key() == key)
            .map(|k| (k, inner)),
        _ => None,
    };
    let (kind, inner) = match described {
        Some(found) => found,
        None => match Kind::from_create_keys(obj) {
            Some(kind) => (kind, value),
            None => {
                return Err(Problem::error(
                    file,
                    "-",
                    "-",
                    "-",
                    "cannot tell the resource kind: expected a name key such as `virtualNodeName`, \
                     or the describe shape `{\"virtualNode\": {...}}`",
                ));
            }
        },
    };
    let guessed_name = inner
        .get(kind.name_key())
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_owned();
    let err = |path: String, reason: String| {
        Problem::error(file, kind.as_str(), &guessed_name, path, reason)
    };
    let env: Envelope = serde_path_to_error::deserialize(inner).map_err(|e| {
        let path = e.path().to_string();
        err(
            if path == "." { "-".to_owned() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    let missing = |key: &str| err(key.to_owned(), format!("missing field `{key}`"));
    let (name, parent) = match kind {
        Kind::Mesh => (env.mesh_name.clone(), None),
        Kind::VirtualService => (env.virtual_service_name, None),
        Kind::VirtualNode => (env.virtual_node_name, None),
        Kind::VirtualRouter => (env.virtual_router_name, None),
        Kind::Route => (
            env.route_name,
            Some(
                env.virtual_router_name
                    .ok_or_else(|| missing("virtualRouterName"))?,
            ),
        ),
        Kind::VirtualGateway => (env.virtual_gateway_name, None),
        Kind::GatewayRoute => (
            env.gateway_route_name,
            Some(
                env.virtual_gateway_name
                    .ok_or_else(|| missing("virtualGatewayName"))?,
            ),
        ),
    };
    let name = name.ok_or_else(|| missing(kind.name_key()))?;
    if env.spec.is_null() && kind != Kind::Mesh && kind != Kind::VirtualService {
        return Err(missing("spec"));
    }
    let spec = match kind {
        Kind::Mesh => Spec::Mesh(parse_spec(&env.spec).map_err(|(p, r)| err(p, r))?),
        Kind::VirtualService => {
            Spec::VirtualService(parse_spec(&env.spec).map_err(|(p, r)| err(p, r))?)
        }
        Kind::VirtualNode => Spec::VirtualNode(parse_spec(&env.spec).map_err(|(p, r)| err(p, r))?),
        Kind::VirtualRouter => {
            Spec::VirtualRouter(parse_spec(&env.spec).map_err(|(p, r)| err(p, r))?)
        }
        Kind::Route => Spec::Route(parse_spec(&env.spec).map_err(|(p, r)| err(p, r))?),
        Kind::VirtualGateway => {
            Spec::VirtualGateway(parse_spec(&env.spec).map_err(|(p, r)| err(p, r))?)
        }
        Kind::GatewayRoute => {
            Spec::GatewayRoute(parse_spec(&env.spec).map_err(|(p, r)| err(p, r))?)
        }
    };
    let mut h = Fnv::new();
    h.write(kind.as_str().as_bytes());
    for part in [
        env.mesh_name.as_deref(),
        Some(name.as_str()),
        parent.as_deref(),
    ] {
        h.write(b"|");
        h.write(part.unwrap_or("").as_bytes());
    }
    h.value(&env.spec);
    Ok(Resource {
        file: file.to_owned(),
        mesh: env.mesh_name,
        name,
        parent,
        spec,
        digest: h.0,
    })
}

/// Parses a spec, returning `(spec.field.path, reason)` on failure. A null spec is an empty one.
fn parse_spec<T: DeserializeOwned>(spec: &Value) -> Result<T, (String, String)> {
    let empty = Value::Object(serde_json::Map::new());
    let spec = if spec.is_null() { &empty } else { spec };
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        (path, e.into_inner().to_string())
    })
}
