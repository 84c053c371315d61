//! What the in-process proxy targets share: the runtime, the mesh spec and the proxy start.
//! Panics here are set-up failures of the harness, not findings.

/// The runtime an in-process harness drives the proxy and its peers on: two workers, as on
/// the 2-core build machine.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("harness runtime: {e}"),
    }
}

/// A mesh where node `front` reaches `svc.local`, served by node `up` on 127.0.0.1:`port`
/// over HTTP/1.1; egress to anything else is dropped.
pub fn spec(port: u16) -> String {
    format!(
        "meshName: m\nspec: {{egressFilter: {{type: DROP_ALL}}}}\n---\n\
         meshName: m\nvirtualNodeName: front\nspec:\n  backends: [{{virtualService: {{virtualServiceName: svc.local}}}}]\n  listeners: [{{portMapping: {{port: {port}, protocol: http}}}}]\n  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}\n---\n\
         meshName: m\nvirtualNodeName: up\nspec:\n  listeners: [{{portMapping: {{port: {port}, protocol: http}}}}]\n  serviceDiscovery: {{dns: {{hostname: 127.0.0.1}}}}\n---\n\
         meshName: m\nvirtualServiceName: svc.local\nspec: {{provider: {{virtualNode: {{virtualNodeName: up}}}}}}\n"
    )
}

/// Starts the proxy as node `front` of [`spec`] with its upstream on `port` (no admin, no file
/// watching). Call it inside the harness runtime.
pub async fn start_proxy(port: u16) -> outrider_app::RunningProxy {
    let sel = outrider_config::Selector {
        mesh: None,
        node: Some("front".into()),
        gateway: None,
    };
    let built = match outrider_config::build_from_str("fuzz.yaml", &spec(port), &sel) {
        Ok(b) => b,
        Err(p) => panic!("harness spec must compile: {p:?}"),
    };
    let opts = outrider_app::ProxyOptions {
        admin_addr: None,
        watch_config: false,
        ..outrider_app::ProxyOptions::local(Some(built.snapshot))
    };
    match outrider_app::start(opts).await {
        Ok(p) => p,
        Err(e) => panic!("harness proxy: {e}"),
    }
}
