//! Kubernetes App Mesh controller objects (`apiVersion: appmesh.k8s.aws/v1beta2`) translated into
//! the create-shape documents the loader types.
//!
//! Names follow the controller: an object's App Mesh name is `spec.awsName` when set; otherwise a
//! Mesh or VirtualService keeps `metadata.name`, and a VirtualNode, VirtualRouter, VirtualGateway
//! or GatewayRoute is named `<metadata.name>_<metadata.namespace>` (just `metadata.name` when the
//! object has no namespace, since offline there is no current namespace to fall back on).
//!
//! Spec fields read and ignored because they only steer the controller inside the cluster:
//! `awsName` (used as the name), `meshRef` (used as the mesh), `podSelector`,
//! `namespaceSelector`, `gatewayRouteSelector` and `virtualGatewayRef` (used as the parent of a
//! GatewayRoute). `metadata` other than `name` and `namespace`, and `status`, are never read.

use serde_json::{Map, Value};

use crate::Problem;
use crate::load::{Kind, Loaded, push_resource};

/// The API group of the controller's custom resources.
const API_GROUP: &str = "appmesh.k8s.aws/";

/// The only version read: v1beta1 objects have a different shape.
const API_VERSION: &str = "appmesh.k8s.aws/v1beta2";

/// Spec fields that only steer the controller; dropped before the spec is typed.
const K8S_ONLY: [&str; 6] = [
    "awsName",
    "meshRef",
    "podSelector",
    "namespaceSelector",
    "gatewayRouteSelector",
    "virtualGatewayRef",
];

/// One App Mesh object read from a manifest, waiting for every file to be read so that
/// references across files resolve.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    file: String,
    kind: Kind,
    name: String,
    namespace: Option<String>,
    aws_name: Option<String>,
    spec: Map<String, Value>,
}

/// Every object of one load, to look references up in.
struct Index<'a> {
    objects: &'a [Object],
}

/// Where a spec being translated sits, for references and problems.
struct Scope<'a> {
    namespace: Option<&'a str>,
    errors: Vec<(String, String)>,
}

impl Object {
    /// The App Mesh name: `awsName`, else the controller's default.
    fn app_mesh_name(&self) -> String {
        self.aws_name
            .clone()
            .unwrap_or_else(|| default_name(self.kind, &self.name, self.namespace.as_deref()))
    }

    fn problem(&self, path: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem::error(
            &self.file,
            self.kind.as_str(),
            self.app_mesh_name(),
            path,
            reason,
        )
    }
}

impl<'a> Index<'a> {
    /// The App Mesh name of the `kind` object `name` in `namespace`. An object without a
    /// namespace also answers a reference that names none; an object that is not loaded gets the
    /// controller's default name.
    fn name_of(&self, kind: Kind, name: &str, namespace: Option<&str>, explicit: bool) -> String {
        let same = |o: &&Object| o.kind == kind && o.name == name;
        let exact = self
            .objects
            .iter()
            .filter(same)
            .find(|o| o.namespace.as_deref() == namespace);
        let loose = || {
            let mut any = self.objects.iter().filter(same);
            match (any.next(), any.next()) {
                (Some(one), None) if !explicit || one.namespace.is_none() => Some(one),
                _ => None,
            }
        };
        match exact.or_else(loose) {
            Some(o) => o.app_mesh_name(),
            None => default_name(kind, name, namespace),
        }
    }

    /// The mesh `obj` belongs to: `spec.meshRef.name` (the named Mesh object's App Mesh name),
    /// else the only Mesh object loaded, else none.
    fn mesh_of(&self, obj: &Object) -> Result<Option<String>, Problem> {
        if obj.kind == Kind::Mesh {
            return Ok(None);
        }
        if let Some(r) = obj.spec.get("meshRef") {
            let Some(name) = r.get("name").and_then(Value::as_str) else {
                return Err(obj.problem("spec.meshRef.name", "a mesh reference needs `name`"));
            };
            return Ok(Some(self.name_of(Kind::Mesh, name, None, false)));
        }
        let mut meshes = self.objects.iter().filter(|o| o.kind == Kind::Mesh);
        match (meshes.next(), meshes.next()) {
            (None, _) => Ok(None),
            (Some(one), None) => Ok(Some(one.app_mesh_name())),
            (Some(_), Some(_)) => Err(obj.problem(
                "spec.meshRef",
                "several Mesh objects are loaded: set `spec.meshRef.name` to pick one",
            )),
        }
    }

    /// The gateway of a GatewayRoute: `spec.virtualGatewayRef`, else the only VirtualGateway.
    fn gateway_of(&self, obj: &Object, scope: &mut Scope<'_>) -> Option<String> {
        if let Some(r) = obj.spec.get("virtualGatewayRef") {
            return self.reference(Kind::VirtualGateway, r, "spec.virtualGatewayRef", scope);
        }
        let mut gateways = self
            .objects
            .iter()
            .filter(|o| o.kind == Kind::VirtualGateway);
        match (gateways.next(), gateways.next()) {
            (Some(one), None) => Some(one.app_mesh_name()),
            _ => {
                scope.errors.push((
                    "spec.virtualGatewayRef".to_owned(),
                    "set `virtualGatewayRef`: it is needed unless exactly one VirtualGateway is \
                     loaded"
                        .to_owned(),
                ));
                None
            }
        }
    }

    /// Resolves a `*Ref` object to the App Mesh name of the object it names.
    fn reference(
        &self,
        kind: Kind,
        r: &Value,
        path: &str,
        scope: &mut Scope<'_>,
    ) -> Option<String> {
        let Some(name) = r.get("name").and_then(Value::as_str) else {
            scope
                .errors
                .push((path.to_owned(), "a reference needs `name`".to_owned()));
            return None;
        };
        let explicit = r.get("namespace").and_then(Value::as_str);
        let namespace = explicit.or(scope.namespace);
        Some(self.name_of(kind, name, namespace, explicit.is_some()))
    }

    /// Translates a spec value: `*Ref` and `*ARN` references become the API's name fields, and
    /// the controller's `ARN` spelling becomes the API's `Arn`.
    fn convert(&self, v: &Value, parent: &str, path: &str, scope: &mut Scope<'_>) -> Value {
        match v {
            Value::Object(map) => {
                let mut out = Map::new();
                for (key, child) in map {
                    let child_path = format!("{path}.{key}");
                    let target = match key.as_str() {
                        "virtualNodeRef" | "virtualNodeARN" => Some(Kind::VirtualNode),
                        "virtualServiceRef" | "virtualServiceARN" => Some(Kind::VirtualService),
                        "virtualRouterRef" | "virtualRouterARN" => Some(Kind::VirtualRouter),
                        _ => None,
                    };
                    let Some(kind) = target else {
                        let value = self.convert(child, key, &child_path, scope);
                        out.insert(api_key(key), value);
                        continue;
                    };
                    let name = if key.ends_with("Ref") {
                        self.reference(kind, child, &child_path, scope)
                    } else {
                        arn_name(child, &child_path, scope)
                    };
                    // A weighted target names its node `virtualNode`; everywhere else the API
                    // uses the kind's name key.
                    let api = if parent == "weightedTargets" {
                        "virtualNode".to_owned()
                    } else {
                        kind.name_key().to_owned()
                    };
                    if let Some(name) = name {
                        out.insert(api, Value::String(name));
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.convert(item, parent, &format!("{path}[{i}]"), scope))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The create-shape documents of one object: one, plus one Route per inline router route.
    fn translate(&self, obj: &Object) -> Result<Vec<Value>, Vec<Problem>> {
        let mesh = self.mesh_of(obj).map_err(|p| vec![p])?;
        let name = obj.app_mesh_name();
        let mut scope = Scope {
            namespace: obj.namespace.as_deref(),
            errors: Vec::new(),
        };
        let mut spec = obj.spec.clone();
        for key in K8S_ONLY {
            spec.remove(key);
        }
        let routes = if obj.kind == Kind::VirtualRouter {
            spec.remove("routes")
        } else {
            None
        };
        let parent = if obj.kind == Kind::GatewayRoute {
            self.gateway_of(obj, &mut scope)
        } else {
            None
        };
        let spec = self.convert(&Value::Object(spec), "spec", "spec", &mut scope);
        let mut docs = vec![envelope(obj.kind, mesh.as_deref(), &name, parent, spec)];
        if let Some(routes) = routes {
            self.routes(&routes, mesh.as_deref(), &name, &mut scope, &mut docs);
        }
        if scope.errors.is_empty() {
            Ok(docs)
        } else {
            Err(scope
                .errors
                .into_iter()
                .map(|(path, reason)| obj.problem(path, reason))
                .collect())
        }
    }

    /// Inline `spec.routes[]` of a router, each as a Route named by its `name`.
    fn routes(
        &self,
        routes: &Value,
        mesh: Option<&str>,
        router: &str,
        scope: &mut Scope<'_>,
        docs: &mut Vec<Value>,
    ) {
        let Some(routes) = routes.as_array() else {
            scope
                .errors
                .push(("spec.routes".to_owned(), "expected a list".to_owned()));
            return;
        };
        for (i, route) in routes.iter().enumerate() {
            let path = format!("spec.routes[{i}]");
            let Some(mut body) = route.as_object().cloned() else {
                scope
                    .errors
                    .push((path, "expected a route object".to_owned()));
                continue;
            };
            let Some(Value::String(route_name)) = body.remove("name") else {
                scope
                    .errors
                    .push((format!("{path}.name"), "a route needs `name`".to_owned()));
                continue;
            };
            let spec = self.convert(&Value::Object(body), "spec", &path, scope);
            docs.push(envelope(
                Kind::Route,
                mesh,
                &route_name,
                Some(router.to_owned()),
                spec,
            ));
        }
    }
}

/// True for an object with `apiVersion` and `kind`: a Kubernetes manifest object.
pub(crate) fn is_object(v: &Value) -> bool {
    v.get("apiVersion").is_some_and(Value::is_string) && v.get("kind").is_some_and(Value::is_string)
}

/// Reads one manifest object (or a `List` of them) into `objects`. Objects of other API groups
/// (Deployments, Services, ...) are skipped, so a whole application manifest can be given.
pub(crate) fn collect(file: &str, v: &Value, objects: &mut Vec<Object>, out: &mut Loaded) {
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.ends_with("List")
        && let Some(items) = v.get("items").and_then(Value::as_array)
    {
        for item in items {
            if is_object(item) {
                collect(file, item, objects, out);
            }
        }
        return;
    }
    if !api.starts_with(API_GROUP) {
        return;
    }
    let meta_name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("-");
    let problem = |path: &str, reason: String| Problem::error(file, kind, meta_name, path, reason);
    if api != API_VERSION {
        out.problems.push(problem(
            "apiVersion",
            format!("`{api}` is not supported: use `{API_VERSION}`"),
        ));
        return;
    }
    let Some(kind) = kind_of(kind) else {
        out.problems.push(problem(
            "kind",
            format!("`{kind}` is not an App Mesh controller kind"),
        ));
        return;
    };
    let Some(name) = v.pointer("/metadata/name").and_then(Value::as_str) else {
        out.problems
            .push(problem("metadata.name", "missing field `name`".to_owned()));
        return;
    };
    let spec = match v.get("spec") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(spec)) => spec.clone(),
        Some(_) => {
            out.problems
                .push(problem("spec", "expected an object".to_owned()));
            return;
        }
    };
    let aws_name = spec
        .get("awsName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    objects.push(Object {
        file: file.to_owned(),
        kind,
        name: name.to_owned(),
        namespace: v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned),
        aws_name,
        spec,
    });
}

/// Translates every collected object, now that all files are read, and loads the results.
pub(crate) fn finish(objects: &[Object], out: &mut Loaded) {
    let index = Index { objects };
    for obj in objects {
        match index.translate(obj) {
            Ok(docs) => {
                for doc in docs {
                    push_resource(&obj.file, &doc, out);
                }
            }
            Err(problems) => out.problems.extend(problems),
        }
    }
}

/// The controller's default App Mesh name of an object without `awsName`.
fn default_name(kind: Kind, name: &str, namespace: Option<&str>) -> String {
    match (kind, namespace) {
        (Kind::Mesh | Kind::VirtualService, _) | (_, None) => name.to_owned(),
        (_, Some(ns)) => format!("{name}_{ns}"),
    }
}

fn kind_of(kind: &str) -> Option<Kind> {
    Some(match kind {
        "Mesh" => Kind::Mesh,
        "VirtualNode" => Kind::VirtualNode,
        "VirtualService" => Kind::VirtualService,
        "VirtualRouter" => Kind::VirtualRouter,
        "VirtualGateway" => Kind::VirtualGateway,
        "GatewayRoute" => Kind::GatewayRoute,
        _ => return None,
    })
}

/// The controller spells `ARN` where the API spells `Arn`: `certificateARN`, `...ARNs`.
fn api_key(key: &str) -> String {
    if let Some(stem) = key.strip_suffix("ARN") {
        format!("{stem}Arn")
    } else if let Some(stem) = key.strip_suffix("ARNs") {
        format!("{stem}Arns")
    } else {
        key.to_owned()
    }
}

/// The resource name at the end of an App Mesh ARN: `arn:...:mesh/shop/virtualNode/front`.
fn arn_name(v: &Value, path: &str, scope: &mut Scope<'_>) -> Option<String> {
    let name = v
        .as_str()
        .filter(|arn| arn.starts_with("arn:"))
        .and_then(|arn| arn.rsplit_once('/'))
        .map(|(_, name)| name)
        .filter(|name| !name.is_empty());
    if name.is_none() {
        scope.errors.push((
            path.to_owned(),
            "expected an App Mesh ARN such as `arn:aws:appmesh:REGION:ACCOUNT:mesh/MESH/virtualNode/NAME`"
                .to_owned(),
        ));
    }
    name.map(str::to_owned)
}

/// A create-shape document.
fn envelope(
    kind: Kind,
    mesh: Option<&str>,
    name: &str,
    parent: Option<String>,
    spec: Value,
) -> Value {
    let mut doc = Map::new();
    if kind == Kind::Mesh {
        doc.insert("meshName".to_owned(), Value::String(name.to_owned()));
    } else {
        if let Some(mesh) = mesh {
            doc.insert("meshName".to_owned(), Value::String(mesh.to_owned()));
        }
        doc.insert(kind.name_key().to_owned(), Value::String(name.to_owned()));
    }
    if let Some(parent) = parent {
        let key = match kind {
            Kind::Route => "virtualRouterName",
            _ => "virtualGatewayName",
        };
        doc.insert(key.to_owned(), Value::String(parent));
    }
    doc.insert("spec".to_owned(), spec);
    Value::Object(doc)
}
