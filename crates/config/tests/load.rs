//! Loading: both CLI shapes, JSON and YAML, arrays, streams, directories, parse errors.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;

use outrider_config::{Kind, Severity, load, load_str};

fn data(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mesh")
        .join(sub)
}

fn kinds(loaded: &outrider_config::Loaded) -> Vec<(Kind, String)> {
    let mut v: Vec<(Kind, String)> = loaded
        .resources
        .items
        .iter()
        .map(|r| (r.kind(), r.name.clone()))
        .collect();
    v.sort();
    v
}

#[test]
fn describe_shape_json_directory() {
    let loaded = load(&[data("describe")]);
    assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
    assert_eq!(loaded.resources.items.len(), 1 + 4 + 1 + 3 + 2);
    let route = loaded.resources.of_kind(Kind::Route).next().unwrap();
    assert_eq!(route.parent.as_deref(), Some("svc-a-router"));
    assert_eq!(route.mesh.as_deref(), Some("shop"));
    assert!(route.file.ends_with("30-routes.json"));
}

#[test]
fn create_shape_yaml_directory_matches_describe_shape() {
    let yaml = load(&[data("create")]);
    assert!(yaml.problems.is_empty(), "{:#?}", yaml.problems);
    let json = load(&[data("describe")]);
    assert_eq!(kinds(&yaml), kinds(&json));
    // Same specs, whichever the shape.
    for r in &yaml.resources.items {
        let twin = json
            .resources
            .items
            .iter()
            .find(|j| j.kind() == r.kind() && j.name == r.name)
            .unwrap();
        assert_eq!(twin.spec, r.spec, "{}", r.name);
    }
}

#[test]
fn directory_is_read_in_name_order_and_skips_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.yml"),
        "meshName: m\nvirtualNodeName: b\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"meshName":"m","virtualNodeName":"a","spec":{}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not config").unwrap();
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let loaded = load(&[dir.path().to_path_buf()]);
    assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
    let names: Vec<&str> = loaded
        .resources
        .items
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn json_array_of_resources() {
    let text = r#"[{"meshName":"m","virtualNodeName":"a","spec":{}},
                   {"virtualService":{"meshName":"m","virtualServiceName":"s","spec":{},"status":{"status":"ACTIVE"}}}]"#;
    let loaded = load_str("x.json", text);
    assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
    assert_eq!(
        kinds(&loaded),
        [
            (Kind::VirtualService, "s".into()),
            (Kind::VirtualNode, "a".into())
        ]
    );
}

#[test]
fn yaml_stream_with_both_shapes() {
    let text = "mesh:\n  meshName: m\n  spec: {egressFilter: {type: ALLOW_ALL}}\n---\nmeshName: m\nvirtualRouterName: r\nrouteName: x\nspec:\n  tcpRoute: {action: {weightedTargets: [{virtualNode: a, weight: 1}]}}\n---\n";
    let loaded = load_str("x.yaml", text);
    assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
    assert_eq!(
        kinds(&loaded),
        [(Kind::Mesh, "m".into()), (Kind::Route, "x".into())]
    );
}

#[test]
fn create_shape_mesh_without_spec() {
    let loaded = load_str("x.json", r#"{"meshName":"m"}"#);
    assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
    assert_eq!(kinds(&loaded), [(Kind::Mesh, "m".into())]);
}

#[test]
fn invalid_json_is_one_problem_with_its_line() {
    let loaded = load_str("bad.json", "{\n  \"meshName\": \"m\",\n  oops\n}");
    assert_eq!(loaded.problems.len(), 1);
    let p = &loaded.problems[0];
    assert_eq!(p.severity, Severity::Error);
    assert!(p.reason.contains("line 3"), "{p}");
    assert!(
        p.to_string().starts_with("bad.json: -/-: -: invalid JSON"),
        "{p}"
    );
}

#[test]
fn invalid_yaml_is_one_problem() {
    let loaded = load_str("bad.yaml", "meshName: [unclosed\n");
    assert_eq!(loaded.problems.len(), 1, "{:#?}", loaded.problems);
    assert!(loaded.problems[0].reason.starts_with("invalid YAML"));
}

#[test]
fn unknown_kind_is_a_problem_and_others_still_load() {
    let text = "{\"something\": 1}\n---\nmeshName: m\nvirtualNodeName: a\nspec: {}\n";
    let loaded = load_str("x.yaml", text);
    assert_eq!(loaded.problems.len(), 1);
    assert!(
        loaded.problems[0]
            .reason
            .contains("cannot tell the resource kind")
    );
    assert_eq!(loaded.resources.items.len(), 1);
}

#[test]
fn unknown_envelope_key_is_refused() {
    let loaded = load_str("x.yaml", "meshName: m\nvirtualNodeName: a\nspecs: {}\n");
    assert_eq!(loaded.problems.len(), 1);
    assert_eq!(loaded.problems[0].path, "specs");
}

#[test]
fn missing_file_is_a_problem() {
    let loaded = load(&[PathBuf::from("/nonexistent/outrider.yaml")]);
    assert_eq!(loaded.problems.len(), 1);
    assert!(loaded.problems[0].reason.starts_with("cannot read"));
}

#[test]
fn hash_ignores_shape_order_and_metadata() {
    let a = load(&[data("describe")]).resources.digest();
    let b = load(&[data("create")]).resources.digest();
    // The create files omit meshName on services, so the digests differ, but each is stable.
    assert_eq!(a, load(&[data("describe")]).resources.digest());
    assert_eq!(a.len(), 16);
    assert_ne!(a, b);
    let x = load_str(
        "x.json",
        r#"{"meshName":"m","virtualNodeName":"a","spec":{"listeners":[],"backends":[]}}"#,
    );
    let y = load_str(
        "y.yaml",
        "spec: {backends: [], listeners: []}\nvirtualNodeName: a\nmeshName: m\ntags: []\n",
    );
    assert_eq!(x.resources.digest(), y.resources.digest());
}

#[test]
fn yaml_names_that_look_like_yaml_1_1_booleans_stay_strings() {
    let loaded = load_str("x.yaml", "meshName: no\nvirtualNodeName: n\nspec: {}\n");
    assert!(loaded.problems.is_empty(), "{:#?}", loaded.problems);
    assert_eq!(loaded.resources.items[0].name, "n");
    assert_eq!(loaded.resources.items[0].mesh.as_deref(), Some("no"));
}
