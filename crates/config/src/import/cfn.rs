//! CloudFormation templates: the `AWS::AppMesh::*` resources of a template, with the intrinsic
//! functions that can be worked out offline resolved, translated into create-shape documents.
//!
//! Resolved offline: `Ref` to a parameter with a `Default` or to an App Mesh resource (its name,
//! where CloudFormation would give the ARN: every field it can feed here is a name),
//! `Fn::GetAtt` of a name attribute (`MeshName`, `VirtualNodeName`, ...), `Fn::Sub` whose
//! variables are such references, and `Fn::Join`. Anything else (`Fn::ImportValue`, pseudo
//! parameters such as `AWS::Region`, parameters without a default, `Arn` or `Uid` attributes,
//! other functions) is a problem naming the logical id and the field. A resource without its
//! name property is named by its logical id. `Condition`s are not evaluated.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::Problem;
use crate::load::{Kind, Loaded, push_resource};

/// Resource types read; everything else in a template is skipped.
const TYPE_PREFIX: &str = "AWS::AppMesh::";

/// How deep references may chain (a name made of a `!Sub` of another name...) before the chain
/// is taken for a cycle.
const MAX_DEPTH: usize = 16;

/// YAML short-form tags of intrinsic functions, spelled without the `!`.
const SHORT_FORMS: [&str; 17] = [
    "Ref",
    "GetAtt",
    "Sub",
    "Join",
    "ImportValue",
    "Select",
    "Split",
    "If",
    "Equals",
    "And",
    "Or",
    "Not",
    "FindInMap",
    "Base64",
    "GetAZs",
    "Cidr",
    "Condition",
];

/// A YAML node with CloudFormation's short-form tags turned into the long form.
struct Node(Value);

/// The untagged content of a [`Node`].
struct Untagged(Value);

/// One template's parameters and resources, to resolve references against.
struct Template<'a> {
    parameters: Option<&'a Map<String, Value>>,
    resources: &'a Map<String, Value>,
}

impl<'de> Deserialize<'de> for Untagged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UntaggedVisitor)
    }
}

struct UntaggedVisitor;

impl<'de> Visitor<'de> for UntaggedVisitor {
    type Value = Untagged;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Untagged, E> {
        Ok(Untagged(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Untagged, E> {
        Ok(Untagged(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Untagged, E> {
        Ok(Untagged(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Untagged, E> {
        Ok(Untagged(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Untagged, E> {
        Ok(Untagged(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Untagged, E> {
        Ok(Untagged(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Untagged, E> {
        Ok(Untagged(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Untagged, E> {
        Ok(Untagged(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Untagged, D::Error> {
        Node::deserialize(d).map(|n| Untagged(n.0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Untagged, A::Error> {
        let mut items = Vec::new();
        while let Some(Node(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Untagged(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Untagged, A::Error> {
        let mut out = Map::new();
        while let Some((key, Node(value))) = map.next_entry::<String, Node>()? {
            out.insert(key, value);
        }
        Ok(Untagged(Value::Object(out)))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let serde_saphyr::Tagged(Untagged(value), tag) =
            serde_saphyr::Tagged::<Untagged>::deserialize(d)?;
        let short = tag
            .as_deref()
            .and_then(|t| t.strip_prefix('!'))
            .filter(|t| SHORT_FORMS.contains(t));
        Ok(Node(match short {
            None => value,
            Some(name) => long_form(name, value),
        }))
    }
}

impl Template<'_> {
    /// Resolves every intrinsic function in `v`, recording `(path, reason)` for each that
    /// cannot be resolved offline.
    fn walk(&self, v: &Value, path: &str, errors: &mut Vec<(String, String)>) -> Value {
        if let Some((func, arg)) = intrinsic(v) {
            return match self.call(func, arg, 0) {
                Ok(resolved) => resolved,
                Err(reason) => {
                    errors.push((path.to_owned(), reason));
                    Value::Null
                }
            };
        }
        match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, child)| (k.clone(), self.walk(child, &format!("{path}.{k}"), errors)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.walk(item, &format!("{path}[{i}]"), errors))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Resolves `v` entirely, failing at the first function that cannot be resolved.
    fn resolve(&self, v: &Value, depth: usize) -> Result<Value, String> {
        if let Some((func, arg)) = intrinsic(v) {
            return self.call(func, arg, depth);
        }
        match v {
            Value::Object(map) => map
                .iter()
                .map(|(k, child)| Ok((k.clone(), self.resolve(child, depth)?)))
                .collect::<Result<Map<_, _>, String>>()
                .map(Value::Object),
            Value::Array(items) => items
                .iter()
                .map(|item| self.resolve(item, depth))
                .collect::<Result<Vec<_>, String>>()
                .map(Value::Array),
            other => Ok(other.clone()),
        }
    }

    fn call(&self, func: &str, arg: &Value, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("references nest too deep; is there a cycle?".to_owned());
        }
        match func {
            "Ref" => {
                let name = arg.as_str().ok_or("`Ref` takes a name")?;
                self.reference(name, depth + 1)
            }
            "Fn::GetAtt" => {
                let (resource, attr) = match arg {
                    Value::String(s) => s.split_once('.').ok_or("`Fn::GetAtt` takes `A.B`")?,
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::String(r), Value::String(a)] => (r.as_str(), a.as_str()),
                        _ => return Err("`Fn::GetAtt` takes [resource, attribute]".to_owned()),
                    },
                    _ => return Err("`Fn::GetAtt` takes [resource, attribute]".to_owned()),
                };
                self.attribute(resource, attr, depth + 1).map(Value::String)
            }
            "Fn::Sub" => {
                let (text, vars) = match arg {
                    Value::String(s) => (s.as_str(), None),
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::String(s), Value::Object(vars)] => (s.as_str(), Some(vars)),
                        _ => return Err("`Fn::Sub` takes a string or [string, {vars}]".to_owned()),
                    },
                    _ => return Err("`Fn::Sub` takes a string or [string, {vars}]".to_owned()),
                };
                self.substitute(text, vars, depth + 1).map(Value::String)
            }
            "Fn::Join" => {
                let [Value::String(sep), list] = arg.as_array().map(Vec::as_slice).unwrap_or(&[])
                else {
                    return Err("`Fn::Join` takes [separator, [values]]".to_owned());
                };
                let list = self.resolve(list, depth + 1)?;
                let parts = list
                    .as_array()
                    .ok_or("`Fn::Join` takes [separator, [values]]")?
                    .iter()
                    .map(text)
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Value::String(parts.join(sep)))
            }
            "Fn::ImportValue" => Err(
                "`Fn::ImportValue` reads another stack's exports; it cannot be resolved offline"
                    .to_owned(),
            ),
            other => Err(format!("`{other}` cannot be resolved offline")),
        }
    }

    /// `Ref name`: a parameter's default, or an App Mesh resource's name.
    fn reference(&self, name: &str, depth: usize) -> Result<Value, String> {
        if name.starts_with("AWS::") {
            return Err(format!(
                "pseudo parameter `{name}` depends on the deployment; it cannot be resolved offline"
            ));
        }
        if let Some(param) = self.parameters.and_then(|p| p.get(name)) {
            return match param.get("Default") {
                Some(d @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Ok(d.clone()),
                _ => Err(format!(
                    "parameter `{name}` has no `Default`; it cannot be resolved offline"
                )),
            };
        }
        let (kind, _) = self.resource(name)?;
        self.attribute(name, own_name_attribute(kind), depth)
            .map(Value::String)
    }

    /// `Fn::GetAtt [resource, attr]` for a name attribute.
    fn attribute(&self, logical: &str, attr: &str, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err("references nest too deep; is there a cycle?".to_owned());
        }
        let (kind, res) = self.resource(logical)?;
        if !name_attributes(kind).contains(&attr) {
            return Err(format!(
                "attribute `{attr}` of `{logical}` cannot be resolved offline; only {} can",
                name_attributes(kind).join(", ")
            ));
        }
        match res.pointer(&format!("/Properties/{attr}")) {
            Some(v) => text(&self.resolve(v, depth + 1)?),
            None if attr == own_name_attribute(kind) => Ok(logical.to_owned()),
            None => Err(format!("`{logical}` has no `{attr}`")),
        }
    }

    /// The kind and body of an App Mesh resource of this template.
    fn resource(&self, logical: &str) -> Result<(Kind, &Value), String> {
        let Some(res) = self.resources.get(logical) else {
            return Err(format!(
                "`{logical}` is neither a parameter nor a resource of this template"
            ));
        };
        let ty = res.get("Type").and_then(Value::as_str).unwrap_or("");
        match kind_of(ty) {
            Some(kind) => Ok((kind, res)),
            None => Err(format!(
                "`{logical}` is a `{ty}`; references to it cannot be resolved offline"
            )),
        }
    }

    /// `Fn::Sub`: `${Name}`, `${Resource.Attr}` and `${!Literal}`.
    fn substitute(
        &self,
        template: &str,
        vars: Option<&Map<String, Value>>,
        depth: usize,
    ) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            if let Some(literal) = after.strip_prefix('!') {
                out.push_str("${");
                rest = literal;
                continue;
            }
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{template}`"))?;
            let name = &after[..end];
            let value = match vars.and_then(|v| v.get(name)) {
                Some(v) => text(&self.resolve(v, depth)?)?,
                None => match name.split_once('.') {
                    Some((res, attr)) => self.attribute(res, attr, depth)?,
                    None => text(&self.reference(name, depth)?)?,
                },
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The create-shape document of one App Mesh resource.
    fn translate(&self, logical: &str, kind: Kind, res: &Value) -> Result<Value, Vec<Problem>> {
        let mut errors = Vec::new();
        let props = match res.get("Properties") {
            Some(p) => self.walk(p, "Properties", &mut errors),
            None => Value::Object(Map::new()),
        };
        let mut doc = Map::new();
        let own = own_name_attribute(kind);
        let name_of = |attr: &str, errors: &mut Vec<(String, String)>| match props.get(attr) {
            None | Some(Value::Null) => None,
            Some(v) => match text(v) {
                Ok(s) => Some(Value::String(s)),
                Err(reason) => {
                    errors.push((format!("Properties.{attr}"), reason));
                    None
                }
            },
        };
        let own_name =
            name_of(own, &mut errors).unwrap_or_else(|| Value::String(logical.to_owned()));
        doc.insert(kind.name_key().to_owned(), own_name);
        if kind != Kind::Mesh
            && let Some(mesh) = name_of("MeshName", &mut errors)
        {
            doc.insert("meshName".to_owned(), mesh);
        }
        let parent = match kind {
            Kind::Route => Some(Kind::VirtualRouter),
            Kind::GatewayRoute => Some(Kind::VirtualGateway),
            _ => None,
        };
        if let Some(parent) = parent
            && let Some(name) = name_of(own_name_attribute(parent), &mut errors)
        {
            doc.insert(parent.name_key().to_owned(), name);
        }
        if let Some(spec) = props.get("Spec") {
            doc.insert("spec".to_owned(), camel_case(spec));
        }
        if errors.is_empty() {
            Ok(Value::Object(doc))
        } else {
            Err(errors
                .into_iter()
                .map(|(path, reason)| Problem::error("", kind.as_str(), logical, path, reason))
                .collect())
        }
    }
}

/// True for a CloudFormation template: an object with a `Resources` map.
pub(crate) fn is_template(v: &Value) -> bool {
    v.get("Resources").is_some_and(Value::is_object)
}

/// True when YAML text may hold short-form intrinsic tags such as `!Ref`, which the plain
/// parser would drop.
pub(crate) fn has_short_forms(text: &str) -> bool {
    SHORT_FORMS
        .iter()
        .any(|f| text.match_indices(f).any(|(i, _)| text[..i].ends_with('!')))
}

/// Parses a YAML stream, keeping short-form intrinsic tags as their long forms: `!Ref X` becomes
/// `{"Ref": "X"}` and `!GetAtt A.B` becomes `{"Fn::GetAtt": ["A", "B"]}`.
pub(crate) fn parse_yaml(
    text: &str,
    options: serde_saphyr::Options,
) -> Result<Vec<Value>, serde_saphyr::Error> {
    serde_saphyr::from_multiple_with_options::<Node>(text, options)
        .map(|docs| docs.into_iter().map(|n| n.0).collect())
}

/// Loads the App Mesh resources of one template.
pub(crate) fn load(file: &str, template: &Value, out: &mut Loaded) {
    let Some(resources) = template.get("Resources").and_then(Value::as_object) else {
        return;
    };
    let t = Template {
        parameters: template.get("Parameters").and_then(Value::as_object),
        resources,
    };
    for (logical, res) in resources {
        let ty = res.get("Type").and_then(Value::as_str).unwrap_or("");
        if !ty.starts_with(TYPE_PREFIX) {
            continue;
        }
        let Some(kind) = kind_of(ty) else {
            out.problems.push(Problem::error(
                file,
                ty,
                logical,
                "Type",
                format!("`{ty}` is not an App Mesh resource type Outrider reads"),
            ));
            continue;
        };
        if let Some(cond) = res.get("Condition").and_then(Value::as_str) {
            out.problems.push(Problem::warning(
                file,
                kind.as_str(),
                logical,
                "Condition",
                format!("condition `{cond}` is not evaluated offline; the resource is loaded"),
            ));
        }
        match t.translate(logical, kind, res) {
            Ok(doc) => push_resource(file, &doc, out),
            Err(problems) => out.problems.extend(problems.into_iter().map(|p| Problem {
                file: file.to_owned(),
                ..p
            })),
        }
    }
}

/// The long form of a short-form tag's value.
fn long_form(name: &str, value: Value) -> Value {
    let (key, value) = match name {
        "Ref" | "Condition" => (name.to_owned(), value),
        "GetAtt" => {
            let value = match value {
                Value::String(s) => match s.split_once('.') {
                    Some((r, a)) => Value::Array(vec![r.into(), a.into()]),
                    None => Value::String(s),
                },
                other => other,
            };
            ("Fn::GetAtt".to_owned(), value)
        }
        _ => (format!("Fn::{name}"), value),
    };
    let mut map = Map::new();
    map.insert(key, value);
    Value::Object(map)
}

/// The function and argument of an intrinsic function object.
fn intrinsic(v: &Value) -> Option<(&str, &Value)> {
    let map = v.as_object()?;
    if map.len() != 1 {
        return None;
    }
    let (key, arg) = map.iter().next()?;
    (key == "Ref" || key.starts_with("Fn::")).then_some((key.as_str(), arg))
}

/// A resolved value as text, as names and `Fn::Sub` need.
fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("expected a string".to_owned()),
    }
}

fn kind_of(ty: &str) -> Option<Kind> {
    Some(match ty.strip_prefix(TYPE_PREFIX)? {
        "Mesh" => Kind::Mesh,
        "VirtualNode" => Kind::VirtualNode,
        "VirtualService" => Kind::VirtualService,
        "VirtualRouter" => Kind::VirtualRouter,
        "Route" => Kind::Route,
        "VirtualGateway" => Kind::VirtualGateway,
        "GatewayRoute" => Kind::GatewayRoute,
        _ => return None,
    })
}

/// The property (and attribute) holding a resource's own name.
fn own_name_attribute(kind: Kind) -> &'static str {
    match kind {
        Kind::Mesh => "MeshName",
        Kind::VirtualService => "VirtualServiceName",
        Kind::VirtualNode => "VirtualNodeName",
        Kind::VirtualRouter => "VirtualRouterName",
        Kind::Route => "RouteName",
        Kind::VirtualGateway => "VirtualGatewayName",
        Kind::GatewayRoute => "GatewayRouteName",
    }
}

/// The attributes of a resource that are names, hence known offline.
fn name_attributes(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Mesh => &["MeshName"],
        Kind::VirtualService => &["MeshName", "VirtualServiceName"],
        Kind::VirtualNode => &["MeshName", "VirtualNodeName"],
        Kind::VirtualRouter => &["MeshName", "VirtualRouterName"],
        Kind::Route => &["MeshName", "VirtualRouterName", "RouteName"],
        Kind::VirtualGateway => &["MeshName", "VirtualGatewayName"],
        Kind::GatewayRoute => &["MeshName", "VirtualGatewayName", "GatewayRouteName"],
    }
}

/// CloudFormation's PascalCase spec keys in the API's camelCase, recursively. An all-capitals key
/// is lowered whole (`DNS` → `dns`, `HTTP2` → `http2`, `TLS` → `tls`); a leading acronym keeps
/// its last capital as the next word's start (`AWSCloudMap` → `awsCloudMap`).
fn camel_case(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, child)| (camel_key(k), camel_case(child)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(camel_case).collect()),
        other => other.clone(),
    }
}

fn camel_key(key: &str) -> String {
    let caps = key.chars().take_while(char::is_ascii_uppercase).count();
    let rest_has_lower = key.chars().any(|c| c.is_ascii_lowercase());
    let lower = match caps {
        0 => 0,
        _ if !rest_has_lower => key.len(),
        1 => 1,
        // A capital before the first lower-case letter starts the next word.
        _ if key[caps..].starts_with(|c: char| c.is_ascii_lowercase()) => caps - 1,
        _ => caps,
    };
    let mut out = key[..lower].to_ascii_lowercase();
    out.push_str(&key[lower..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_camel_case_with_acronyms() {
        for (cfn, api) in [
            ("PortMapping", "portMapping"),
            ("DNS", "dns"),
            ("AWSCloudMap", "awsCloudMap"),
            ("HTTP2", "http2"),
            ("TLS", "tls"),
            ("Http2Route", "http2Route"),
            ("ACM", "acm"),
            ("CertificateAuthorityArns", "certificateAuthorityArns"),
            ("already", "already"),
        ] {
            assert_eq!(camel_key(cfn), api);
        }
    }

    #[test]
    fn short_forms_are_detected_only_after_a_bang() {
        assert!(has_short_forms("a: !Ref X"));
        assert!(!has_short_forms("a: Ref X"));
    }
}
