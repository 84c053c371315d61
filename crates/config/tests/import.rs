//! Kubernetes controller objects and CloudFormation templates as inputs.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;

use outrider_config::model::{
    Backend, ServiceDiscovery, VirtualNodeSpec, VirtualServiceProvider, VirtualServiceSpec,
};
use outrider_config::{
    Kind, Loaded, Problem, Resource, Selector, Severity, Spec, build, load_str, validate,
};

fn data(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(sub)
}

/// The summary without its config hash line's hash, which covers how resources were spelled.
fn summary(path: PathBuf, node: &str) -> String {
    let built = build(&[path], &Selector::node(node)).unwrap();
    let s = built.snapshot.summary();
    s.lines()
        .map(|l| match l.find(" (config ") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn find<'a>(loaded: &'a Loaded, kind: Kind, name: &str) -> &'a Resource {
    loaded
        .resources
        .items
        .iter()
        .find(|r| r.kind() == kind && r.name == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not loaded: {:#?}", loaded.resources.items))
}

fn node_spec<'a>(loaded: &'a Loaded, name: &str) -> &'a VirtualNodeSpec {
    match &find(loaded, Kind::VirtualNode, name).spec {
        Spec::VirtualNode(spec) => spec,
        other => panic!("{other:?}"),
    }
}

fn backend(spec: &VirtualNodeSpec, i: usize) -> &str {
    let Backend::VirtualService(b) = &spec.backends[i];
    &b.virtual_service_name
}

fn provider_node(loaded: &Loaded, name: &str) -> String {
    match &find(loaded, Kind::VirtualService, name).spec {
        Spec::VirtualService(VirtualServiceSpec {
            provider: Some(VirtualServiceProvider::VirtualNode(p)),
        }) => p.virtual_node_name.clone(),
        other => panic!("{other:?}"),
    }
}

fn errors(loaded: &Loaded) -> Vec<&Problem> {
    loaded
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .collect()
}

fn loaded_ok(name: &str, text: &str) -> Loaded {
    let loaded = load_str(name, text);
    assert!(errors(&loaded).is_empty(), "{:#?}", loaded.problems);
    loaded
}

const K8S_HEAD: &str = "apiVersion: appmesh.k8s.aws/v1beta2\n";

#[test]
fn k8s_mesh_compiles_like_the_create_shape() {
    let want = summary(data("mesh/create"), "front");
    for node in ["front", "svc-a-v1"] {
        assert_eq!(
            summary(data("k8s/shop"), node),
            summary(data("mesh/create"), node),
            "{node}"
        );
    }
    assert!(want.contains("svc-a-router"), "{want}");
}

#[test]
fn cfn_template_compiles_like_the_create_shape() {
    for node in ["front", "svc-a-v1", "svc-b"] {
        assert_eq!(
            summary(data("cfn/shop.yaml"), node),
            summary(data("mesh/create"), node),
            "{node}"
        );
    }
}

#[test]
fn k8s_each_kind_translates() {
    let text = format!(
        "{K8S_HEAD}kind: Mesh\nmetadata: {{name: m}}\nspec: {{egressFilter: {{type: ALLOW_ALL}}}}\n\
         ---\n{K8S_HEAD}kind: VirtualNode\nmetadata: {{name: n, namespace: ns}}\nspec:\n  \
         listeners: [{{portMapping: {{port: 8080, protocol: http}}}}]\n  serviceDiscovery:\n    \
         awsCloudMap: {{namespaceName: shop, serviceName: n, attributes: [{{key: a, value: b}}]}}\n\
         ---\n{K8S_HEAD}kind: VirtualService\nmetadata: {{name: s.local, namespace: ns}}\nspec:\n  \
         provider: {{virtualNode: {{virtualNodeRef: {{name: n}}}}}}\n\
         ---\n{K8S_HEAD}kind: VirtualRouter\nmetadata: {{name: r, namespace: ns}}\nspec:\n  \
         listeners: [{{portMapping: {{port: 8080, protocol: tcp}}}}]\n  routes:\n    \
         - name: t\n      tcpRoute:\n        action: {{weightedTargets: [{{virtualNodeRef: {{name: n}}, weight: 1}}]}}\n\
         ---\n{K8S_HEAD}kind: VirtualGateway\nmetadata: {{name: g, namespace: ns}}\nspec:\n  \
         namespaceSelector: {{matchLabels: {{gw: g}}}}\n  gatewayRouteSelector: {{}}\n  \
         podSelector: {{}}\n  listeners: [{{portMapping: {{port: 8088, protocol: http}}}}]\n\
         ---\n{K8S_HEAD}kind: GatewayRoute\nmetadata: {{name: gr, namespace: ns}}\nspec:\n  \
         httpRoute:\n    match: {{prefix: /}}\n    action:\n      target:\n        \
         virtualService: {{virtualServiceRef: {{name: s.local}}}}\n"
    );
    let loaded = loaded_ok("k.yaml", &text);
    assert_eq!(loaded.resources.items.len(), 7);
    assert!(matches!(find(&loaded, Kind::Mesh, "m").spec, Spec::Mesh(_)));
    // Namespaced nodes, routers, gateways and gateway routes get the controller's default name.
    let node = find(&loaded, Kind::VirtualNode, "n_ns");
    assert_eq!(node.mesh.as_deref(), Some("m"));
    assert!(matches!(
        node_spec(&loaded, "n_ns").service_discovery,
        Some(ServiceDiscovery::AwsCloudMap(_))
    ));
    // A virtual service keeps its metadata.name.
    assert_eq!(provider_node(&loaded, "s.local"), "n_ns");
    find(&loaded, Kind::VirtualRouter, "r_ns");
    let route = find(&loaded, Kind::Route, "t");
    assert_eq!(route.parent.as_deref(), Some("r_ns"));
    find(&loaded, Kind::VirtualGateway, "g_ns");
    let gr = find(&loaded, Kind::GatewayRoute, "gr_ns");
    assert_eq!(gr.parent.as_deref(), Some("g_ns"));
    let problems = validate(&loaded.resources);
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
}

#[test]
fn k8s_aws_name_wins_and_refs_use_it() {
    let text = format!(
        "{K8S_HEAD}kind: VirtualNode\nmetadata: {{name: n, namespace: ns}}\nspec:\n  \
         awsName: backend-v1\n  listeners: [{{portMapping: {{port: 80, protocol: http}}}}]\n  \
         serviceDiscovery: {{dns: {{hostname: n.local}}}}\n\
         ---\n{K8S_HEAD}kind: VirtualService\nmetadata: {{name: s, namespace: ns}}\nspec:\n  \
         awsName: backend.local\n  provider: {{virtualNode: {{virtualNodeRef: {{name: n}}}}}}\n\
         ---\n{K8S_HEAD}kind: VirtualNode\nmetadata: {{name: c, namespace: other}}\nspec:\n  \
         backends: [{{virtualService: {{virtualServiceRef: {{name: s, namespace: ns}}}}}}]\n\
         ---\n{K8S_HEAD}kind: VirtualNode\nmetadata: {{name: d, namespace: other}}\nspec:\n  \
         backends: [{{virtualService: {{virtualServiceRef: {{name: missing}}}}}}]\n"
    );
    let loaded = loaded_ok("k.yaml", &text);
    find(&loaded, Kind::VirtualNode, "backend-v1");
    assert_eq!(provider_node(&loaded, "backend.local"), "backend-v1");
    assert_eq!(backend(node_spec(&loaded, "c_other"), 0), "backend.local");
    // An object that is not loaded gets the controller's default name: metadata.name for a service.
    assert_eq!(backend(node_spec(&loaded, "d_other"), 0), "missing");
}

#[test]
fn k8s_mesh_ref_picks_among_several_meshes() {
    let text = format!(
        "{K8S_HEAD}kind: Mesh\nmetadata: {{name: a}}\nspec: {{awsName: mesh-a}}\n\
         ---\n{K8S_HEAD}kind: Mesh\nmetadata: {{name: b}}\n\
         ---\n{K8S_HEAD}kind: VirtualNode\nmetadata: {{name: n}}\nspec: {{meshRef: {{name: a}}}}\n\
         ---\n{K8S_HEAD}kind: VirtualNode\nmetadata: {{name: lost}}\nspec: {{}}\n"
    );
    let loaded = load_str("k.yaml", &text);
    assert_eq!(
        find(&loaded, Kind::VirtualNode, "n").mesh.as_deref(),
        Some("mesh-a")
    );
    find(&loaded, Kind::Mesh, "mesh-a");
    let errs = errors(&loaded);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].name, "lost");
    assert_eq!(errs[0].path, "spec.meshRef");
}

#[test]
fn k8s_problems_name_the_object_and_field() {
    let text = format!(
        "{K8S_HEAD}kind: VirtualRouter\nmetadata: {{name: r}}\nspec:\n  routes:\n    \
         - name: a\n      httpRoute:\n        match: {{prefix: /}}\n        action:\n          \
         weightedTargets: [{{virtualNodeARN: not-an-arn, weight: 1}}]\n    \
         - httpRoute: {{}}\n\
         ---\n{K8S_HEAD}kind: Sidecar\nmetadata: {{name: x}}\n\
         ---\napiVersion: appmesh.k8s.aws/v1beta1\nkind: Mesh\nmetadata: {{name: old}}\n\
         ---\n{K8S_HEAD}kind: VirtualNode\nmetadata: {{name: typo}}\nspec: {{listener: []}}\n\
         ---\n{K8S_HEAD}kind: GatewayRoute\nmetadata: {{name: orphan}}\nspec: {{}}\n"
    );
    let loaded = load_str("k.yaml", &text);
    let found: Vec<(&str, &str, &str)> = errors(&loaded)
        .iter()
        .map(|p| (p.kind.as_str(), p.name.as_str(), p.path.as_str()))
        .collect();
    for want in [
        (
            "VirtualRouter",
            "r",
            "spec.routes[0].httpRoute.action.weightedTargets[0].virtualNodeARN",
        ),
        ("VirtualRouter", "r", "spec.routes[1].name"),
        ("Sidecar", "x", "kind"),
        ("Mesh", "old", "apiVersion"),
        ("VirtualNode", "typo", "spec.listener"),
        ("GatewayRoute", "orphan", "spec.virtualGatewayRef"),
    ] {
        assert!(found.contains(&want), "{want:?} not in {found:#?}");
    }
}

const CFN_MESH: &str = r#"{
  "AWSTemplateFormatVersion": "2010-09-09",
  "Parameters": {
    "Mesh": {"Type": "String", "Default": "m"},
    "Port": {"Type": "Number", "Default": 8080},
    "NoDefault": {"Type": "String"}
  },
  "Resources": {
    "TheMesh": {"Type": "AWS::AppMesh::Mesh", "Properties": {"MeshName": {"Ref": "Mesh"}}},
    "Node": {
      "Type": "AWS::AppMesh::VirtualNode",
      "Properties": {
        "MeshName": {"Fn::GetAtt": ["TheMesh", "MeshName"]},
        "VirtualNodeName": {"Fn::Sub": ["${Base}-v1", {"Base": {"Ref": "Mesh"}}]},
        "Spec": {
          "Listeners": [{"PortMapping": {"Port": {"Ref": "Port"}, "Protocol": "http"},
                         "ConnectionPool": {"HTTP": {"MaxConnections": 10}}}],
          "ServiceDiscovery": {"AWSCloudMap": {"NamespaceName": "ns", "ServiceName": "node"}},
          "Backends": [{"VirtualService": {"VirtualServiceName": {"Fn::GetAtt": "Svc.VirtualServiceName"}}}]
        }
      }
    },
    "Svc": {
      "Type": "AWS::AppMesh::VirtualService",
      "Properties": {
        "MeshName": {"Ref": "TheMesh"},
        "VirtualServiceName": {"Fn::Sub": "svc.${Mesh}.local"},
        "Spec": {"Provider": {"VirtualNode": {"VirtualNodeName": {"Ref": "Node"}}}}
      }
    },
    "Gw": {
      "Type": "AWS::AppMesh::VirtualGateway",
      "Properties": {
        "MeshName": {"Ref": "Mesh"},
        "Spec": {"Listeners": [{"PortMapping": {"Port": 8088, "Protocol": "http"}}]}
      }
    },
    "GwRoute": {
      "Type": "AWS::AppMesh::GatewayRoute",
      "Properties": {
        "MeshName": {"Ref": "Mesh"},
        "VirtualGatewayName": {"Fn::GetAtt": ["Gw", "VirtualGatewayName"]},
        "GatewayRouteName": {"Fn::Join": ["-", ["to", {"Ref": "Mesh"}]]},
        "Spec": {"HttpRoute": {"Match": {"Prefix": "/"},
                 "Action": {"Target": {"VirtualService": {"VirtualServiceName": {"Ref": "Svc"}}}}}}
      }
    }
  }
}"#;

#[test]
fn cfn_json_long_forms_resolve() {
    let loaded = loaded_ok("t.json", CFN_MESH);
    assert_eq!(loaded.resources.items.len(), 5);
    find(&loaded, Kind::Mesh, "m");
    let node = find(&loaded, Kind::VirtualNode, "m-v1");
    assert_eq!(node.mesh.as_deref(), Some("m"));
    let spec = node_spec(&loaded, "m-v1");
    assert_eq!(spec.listeners[0].port_mapping.port, 8080);
    assert!(spec.listeners[0].connection_pool.is_some());
    assert_eq!(backend(spec, 0), "svc.m.local");
    assert_eq!(provider_node(&loaded, "svc.m.local"), "m-v1");
    find(&loaded, Kind::VirtualService, "svc.m.local");
    // Without a name property, the logical id names the resource.
    find(&loaded, Kind::VirtualGateway, "Gw");
    let gr = find(&loaded, Kind::GatewayRoute, "to-m");
    assert_eq!(gr.parent.as_deref(), Some("Gw"));
    let problems = validate(&loaded.resources);
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:#?}");
}

#[test]
fn cfn_yaml_short_forms_resolve() {
    let text = "Parameters:\n  Name: {Type: String, Default: n}\nResources:\n  \
                N:\n    Type: AWS::AppMesh::VirtualNode\n    Properties:\n      \
                MeshName: !Sub '${M.MeshName}'\n      VirtualNodeName: !Join ['-', [!Ref Name, x]]\n      \
                Spec:\n        ServiceDiscovery:\n          DNS:\n            \
                Hostname: !Sub\n              - '${H}.local${!Literal}'\n              - H: !GetAtt N.VirtualNodeName\n  \
                M:\n    Type: AWS::AppMesh::Mesh\n";
    let loaded = loaded_ok("t.yaml", text);
    let node = find(&loaded, Kind::VirtualNode, "n-x");
    assert_eq!(node.mesh.as_deref(), Some("M"));
    let Some(ServiceDiscovery::Dns(dns)) = &node_spec(&loaded, "n-x").service_discovery else {
        panic!("dns expected")
    };
    assert_eq!(dns.hostname, "n-x.local${Literal}");
}

#[test]
fn cfn_unresolvable_references_are_reported() {
    let text = "Parameters:\n  NoDefault: {Type: String}\nResources:\n  \
                M:\n    Type: AWS::AppMesh::Mesh\n    Properties:\n      \
                MeshName: !Sub 'mesh-${AWS::Region}'\n  \
                N:\n    Type: AWS::AppMesh::VirtualNode\n    Properties:\n      \
                MeshName: !ImportValue shared-mesh\n      VirtualNodeName: !Ref NoDefault\n      \
                Spec:\n        Backends:\n          \
                - VirtualService: {VirtualServiceName: !GetAtt S.Arn}\n          \
                - VirtualService: {VirtualServiceName: !Ref Nothing}\n          \
                - VirtualService: {VirtualServiceName: !Ref Bucket}\n          \
                - VirtualService: {VirtualServiceName: !Select [0, [a]]}\n  \
                S:\n    Type: AWS::AppMesh::VirtualService\n  \
                Bucket:\n    Type: AWS::S3::Bucket\n  \
                Loop:\n    Type: AWS::AppMesh::VirtualRouter\n    Properties:\n      \
                VirtualRouterName: !GetAtt Loop.VirtualRouterName\n";
    let loaded = load_str("t.yaml", text);
    let found: Vec<(&str, &str, &str)> = errors(&loaded)
        .iter()
        .map(|p| (p.name.as_str(), p.path.as_str(), p.reason.as_str()))
        .collect();
    let expect = [
        ("M", "Properties.MeshName", "AWS::Region"),
        ("N", "Properties.MeshName", "Fn::ImportValue"),
        ("N", "Properties.VirtualNodeName", "no `Default`"),
        (
            "N",
            "Properties.Spec.Backends[0].VirtualService.VirtualServiceName",
            "`Arn`",
        ),
        (
            "N",
            "Properties.Spec.Backends[1].VirtualService.VirtualServiceName",
            "neither",
        ),
        (
            "N",
            "Properties.Spec.Backends[2].VirtualService.VirtualServiceName",
            "AWS::S3::Bucket",
        ),
        (
            "N",
            "Properties.Spec.Backends[3].VirtualService.VirtualServiceName",
            "Fn::Select",
        ),
        ("Loop", "Properties.VirtualRouterName", "cycle"),
    ];
    for (name, path, needle) in expect {
        assert!(
            found
                .iter()
                .any(|(n, p, r)| *n == name && *p == path && r.contains(needle)),
            "{name} {path} {needle:?} not in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    // Only the resource that resolved is loaded.
    assert_eq!(loaded.resources.items.len(), 1);
}

#[test]
fn cfn_condition_is_a_warning_and_other_types_are_skipped() {
    let text = "Resources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Condition: Prod\n  \
                Q:\n    Type: AWS::SQS::Queue\n";
    let loaded = load_str("t.yaml", text);
    assert_eq!(loaded.resources.items.len(), 1);
    assert_eq!(loaded.problems.len(), 1);
    assert_eq!(loaded.problems[0].severity, Severity::Warning);
    assert_eq!(loaded.problems[0].path, "Condition");
}

#[test]
fn plain_yaml_with_a_bang_in_a_string_still_loads() {
    let loaded = loaded_ok(
        "t.yaml",
        "meshName: m\nvirtualNodeName: n\nspec:\n  serviceDiscovery: {dns: {hostname: 'x!Ref'}}\n",
    );
    find(&loaded, Kind::VirtualNode, "n");
}
