//! deploy/ stays deployable: every JSON and YAML file parses, the ECS task definitions and the
//! Kubernetes manifests carry what ECS and Kubernetes need for an Outrider sidecar, and every
//! mesh in deploy/ passes `outrider validate`.

#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns, unwrap here

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The UID the interception rules let through, and the sidecar runs as.
const PROXY_UID: u64 = 1337;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn files_with(ext: &[&str]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files(&deploy_dir(), &mut all);
    all.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ext.contains(&e))
    });
    all.sort();
    all
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn manifests() -> Vec<(PathBuf, Value)> {
    files_with(&["yaml", "yml"])
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "kubernetes"))
        .flat_map(|p| yaml_docs(&p).into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

fn pod_specs() -> Vec<(PathBuf, Value)> {
    manifests()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "Deployment")
        .map(|(p, d)| (p, d["spec"]["template"]["spec"].clone()))
        .collect()
}

fn validate(config: &Path, node: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outrider"))
        .arg("validate")
        .arg("--config")
        .arg(config)
        .args(["--node", node])
        .env_remove("APPMESH_RESOURCE_ARN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The node name at the end of an App Mesh virtual node ARN.
fn node_of_arn(arn: &str) -> &str {
    arn.rsplit_once("/virtualNode/").map(|(_, n)| n).unwrap()
}

#[test]
fn every_json_and_yaml_file_parses() {
    let json_files = files_with(&["json"]);
    let yaml_files = files_with(&["yaml", "yml"]);
    assert!(json_files.len() >= 2, "{json_files:?}");
    assert!(yaml_files.len() >= 3, "{yaml_files:?}");
    for f in &json_files {
        json(f);
    }
    for f in &yaml_files {
        assert!(!yaml_docs(f).is_empty(), "{} is empty", f.display());
    }
}

#[test]
fn ecs_task_definitions_have_what_ecs_requires() {
    let tds = files_with(&["json"]);
    let tds: Vec<_> = tds
        .iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "ecs"))
        .collect();
    let mut launch_types = Vec::new();
    for path in tds {
        let td = json(path);
        let at = path.display();
        assert!(td["family"].as_str().is_some_and(|f| !f.is_empty()), "{at}");
        assert_eq!(td["networkMode"], "awsvpc", "{at}: APPMESH needs awsvpc");
        launch_types.extend(
            td["requiresCompatibilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
        let containers = td["containerDefinitions"].as_array().unwrap();
        for c in containers {
            assert!(c["name"].is_string(), "{at}: container without name");
            assert!(c["image"].is_string(), "{at}: container without image");
            assert!(
                c["essential"].is_boolean(),
                "{at}: container without essential"
            );
        }
        let proxy = &td["proxyConfiguration"];
        assert_eq!(proxy["type"], "APPMESH", "{at}");
        let sidecar_name = proxy["containerName"].as_str().unwrap();
        let props = proxy["properties"].as_array().unwrap();
        let prop = |name: &str| {
            props
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["value"].as_str())
                .unwrap_or_else(|| panic!("{at}: proxyConfiguration without {name}"))
                .to_string()
        };
        assert_eq!(prop("IgnoredUID"), PROXY_UID.to_string(), "{at}");
        assert_eq!(prop("ProxyIngressPort"), "15000", "{at}");
        assert_eq!(prop("ProxyEgressPort"), "15001", "{at}");
        let app_ports = prop("AppPorts");
        assert!(
            app_ports
                .split(',')
                .all(|p| p.trim().parse::<u16>().is_ok()),
            "{at}: AppPorts {app_ports}"
        );

        let sidecar = containers
            .iter()
            .find(|c| c["name"] == sidecar_name)
            .unwrap_or_else(|| panic!("{at}: no container {sidecar_name}"));
        assert_eq!(sidecar["user"], PROXY_UID.to_string(), "{at}");
        assert_eq!(sidecar["essential"], true, "{at}");
        let check: Vec<&str> = sidecar["healthCheck"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(check.first(), Some(&"CMD"), "{at}");
        assert!(check.iter().any(|a| a.ends_with("outrider")), "{at}");
        assert_eq!(check.last(), Some(&"healthcheck"), "{at}");
        let env = sidecar["environment"].as_array().unwrap();
        let arn = env
            .iter()
            .find(|e| e["name"] == "APPMESH_RESOURCE_ARN")
            .and_then(|e| e["value"].as_str())
            .unwrap();
        assert!(arn.starts_with("arn:aws:appmesh:"), "{at}: {arn}");
        // The node the task runs as exists in the example mesh.
        let (ok, out) = validate(&deploy_dir().join("mesh"), node_of_arn(arn));
        assert!(ok, "{at}: {out}");

        let apps: Vec<_> = containers
            .iter()
            .filter(|c| c["name"] != sidecar_name)
            .collect();
        assert!(!apps.is_empty(), "{at}: no app container");
        for app in apps {
            let waits = app["dependsOn"].as_array().is_some_and(|d| {
                d.iter()
                    .any(|d| d["containerName"] == sidecar_name && d["condition"] == "HEALTHY")
            });
            assert!(
                waits,
                "{at}: {} must dependsOn the sidecar HEALTHY",
                app["name"]
            );
        }
    }
    launch_types.sort();
    assert_eq!(launch_types, vec!["EC2", "FARGATE"]);
}

#[test]
fn kubernetes_pods_intercept_drain_and_run_as_the_proxy_uid() {
    let pods = pod_specs();
    assert!(pods.len() >= 2, "{pods:?}");
    let mut native = 0;
    for (path, pod) in &pods {
        let at = path.display();
        let inits = pod["initContainers"].as_array().unwrap();
        let containers = pod["containers"].as_array().unwrap();
        let init = inits
            .iter()
            .find(|c| c["args"] == serde_json::json!(["iptables", "apply"]))
            .unwrap_or_else(|| panic!("{at}: no `iptables apply` init container"));
        let caps = init["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap();
        assert!(caps.iter().any(|c| c == "NET_ADMIN"), "{at}");
        let env = init["env"].as_array().unwrap();
        let ignore_uid = env
            .iter()
            .find(|e| e["name"] == "APPMESH_IGNORE_UID")
            .map(|e| e["value"].clone());
        assert_eq!(ignore_uid, Some(Value::from(PROXY_UID.to_string())), "{at}");

        // The sidecar is either a regular container or a native sidecar.
        let is_proxy = |c: &&Value| c["args"].get(0).is_some_and(|a| a == "run");
        let native_sidecar = inits
            .iter()
            .find(is_proxy)
            .filter(|c| c["restartPolicy"] == "Always");
        if native_sidecar.is_some() {
            native += 1;
            // Rules first, then the proxy: init containers start in order.
            let init_pos = inits.iter().position(|c| c == init).unwrap();
            let proxy_pos = inits.iter().position(|c| is_proxy(&c)).unwrap();
            assert!(init_pos < proxy_pos, "{at}");
        }
        let sidecar = native_sidecar
            .or_else(|| containers.iter().find(is_proxy))
            .unwrap_or_else(|| panic!("{at}: no `outrider run` container"));
        assert_eq!(sidecar["securityContext"]["runAsUser"], PROXY_UID, "{at}");
        let probe = sidecar["readinessProbe"]["exec"]["command"]
            .as_array()
            .unwrap();
        assert_eq!(probe.last().unwrap(), "healthcheck", "{at}");
        let pre_stop = &sidecar["lifecycle"]["preStop"];
        let drains = pre_stop["exec"]["command"]
            .as_array()
            .is_some_and(|c| c.iter().any(|a| a == "drain"))
            || pre_stop["httpGet"]["path"] == "/drain_listeners";
        assert!(drains, "{at}: the sidecar must drain on preStop");
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        assert!(
            grace >= 30,
            "{at}: grace {grace}s is shorter than the drain"
        );
    }
    assert!(
        native >= 1,
        "no native-sidecar variant (restartPolicy: Always)"
    );
}

#[test]
fn the_sidecar_drain_command_exists() {
    let out = Command::new(env!("CARGO_BIN_EXE_outrider"))
        .args(["drain", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn meshes_in_deploy_pass_validate() {
    let mesh_dir = deploy_dir().join("mesh");
    for node in ["frontend", "catalog-v1", "catalog-v2", "payments"] {
        let (ok, out) = validate(&mesh_dir, node);
        assert!(ok, "{node}: {out}");
    }
    // The ConfigMaps carry a mesh too: each passes as the node its pod runs.
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (path, doc) in manifests() {
        if doc["kind"] != "ConfigMap" {
            continue;
        }
        for (name, body) in doc["data"].as_object().unwrap() {
            let file = tmp.path().join(name);
            std::fs::write(&file, body.as_str().unwrap()).unwrap();
            let (ok, out) = validate(&file, "frontend");
            assert!(ok, "{}: {name}: {out}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1);
    for (path, pod) in pod_specs() {
        let all = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().unwrap());
        for c in all {
            let args: Vec<&str> = c["args"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(i) = args.iter().position(|a| *a == "--node") {
                let (ok, out) = validate(&mesh_dir, args[i + 1]);
                assert!(ok, "{}: {out}", path.display());
            }
        }
    }
}

#[test]
fn systemd_units_order_the_rules_around_the_proxy() {
    let dir = deploy_dir().join("systemd");
    let proxy = std::fs::read_to_string(dir.join("outrider.service")).unwrap();
    let rules = std::fs::read_to_string(dir.join("outrider-iptables.service")).unwrap();
    assert!(proxy.contains("After=outrider-iptables.service"));
    assert!(proxy.contains("Requires=outrider-iptables.service"));
    assert!(rules.contains("Before=outrider.service"));
    assert!(rules.contains("ExecStart=/usr/local/bin/outrider iptables apply"));
    assert!(rules.contains("ExecStop=/usr/local/bin/outrider iptables clean"));
}

#[test]
fn dockerfile_builds_static_and_runs_as_the_proxy_uid() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(text.contains("x86_64-unknown-linux-musl"));
    assert!(text.contains("FROM scratch") || text.contains("distroless/static"));
    assert!(text.contains(&format!("USER {PROXY_UID}")));
}
