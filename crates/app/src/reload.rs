//! Hot reload: re-reading the config files into a new runtime that is swapped in whole,
//! keeping discovery running for clusters that did not move, and the directory watches that
//! start a reload when the files change.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use outrider_config::{Discovery, Selector};
use outrider_discovery::{DnsTarget, Resolver, Watch};
use outrider_http::{Runtime, RuntimeOptions, ServiceAddrs, Upstream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{STARTUP_DISCOVERY_WAIT, Shared};

pub use outrider_admin::ReloadError;

/// Quiet time after a file event before reloading: an editor's save or a ConfigMap `..data`
/// swap is several events, and one reload should see them all. Default is 100 ms.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);
/// Counter of reloads that succeeded (changed or not).
pub const RELOAD_TOTAL: &str = "outrider_config_reload_total";
/// Counter of reloads refused because the new configuration had errors.
pub const RELOAD_FAILURES_TOTAL: &str = "outrider_config_reload_failures_total";

/// Where a reload re-reads the configuration from: the `--config` paths and the node selector.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Files and directories, as given to `outrider_config::build`.
    pub paths: Vec<PathBuf>,
    /// Which node or gateway this proxy is.
    pub selector: Selector,
}

/// What started a reload (logged, and shown in `/server_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched config file or directory changed.
    Files,
    /// SIGHUP.
    Signal,
    /// `POST /reload`.
    Admin,
}

/// A reload that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The config version now running; it counts from 1 (start-up) and grows on every change.
    pub version: u64,
    /// The hash of the configuration now running.
    pub hash: String,
    /// False when the files compiled to the configuration already running (nothing swapped).
    pub changed: bool,
    /// Warnings met while compiling (logged one by one).
    pub warnings: usize,
}

/// Reload state shared by every trigger.
pub(crate) struct ReloadState {
    source: Option<ConfigSource>,
    resolver: Resolver,
    dns_refresh: Duration,
    runtime_opts: RuntimeOptions,
    version: AtomicU64,
    /// Serialises reloads: two triggers at once must not race on the swap.
    lock: Mutex<()>,
    /// Shown by `/server_info`; written once per reload, never on the request path.
    last: StdMutex<Option<LastReload>>,
    pub(crate) discovery: Mutex<DiscoverySet>,
}

#[derive(Debug, Clone)]
struct LastReload {
    trigger: Trigger,
    at_unix_s: u64,
    ok: bool,
    problems: usize,
}

/// The running DNS watches: one per cluster with DNS discovery, and one per TCP virtual
/// service name that must be resolved to tell services sharing a port apart.
#[derive(Default)]
pub(crate) struct DiscoverySet {
    feeds: Vec<Feed>,
    services: Vec<ServiceFeed>,
}

/// Watches a sync no longer needs; dropping them stops them (after the runtime swap).
pub(crate) struct Retired {
    _feeds: Vec<Feed>,
    _services: Vec<ServiceFeed>,
}

/// One DNS watch of a virtual service name feeding that service's address set.
pub(crate) struct ServiceFeed {
    addrs: Arc<ServiceAddrs>,
    watch: Watch,
    _feeder: AbortOnDrop,
}

/// One DNS watch feeding one cluster's endpoints.
pub(crate) struct Feed {
    target: DnsTarget,
    upstream: Arc<Upstream>,
    watch: Watch,
    _feeder: AbortOnDrop,
}

/// Aborts the feeding task when its [`Feed`] goes away, so a retired cluster is not kept alive.
struct AbortOnDrop(JoinHandle<()>);

/// Which filesystem events are worth a reload.
#[derive(Debug, Clone, Default)]
struct WatchPlan {
    /// Directories to watch (a file's parent, or the directory itself).
    dirs: Vec<PathBuf>,
    /// File names given as `--config` files.
    files: Vec<std::ffi::OsString>,
    /// True when some `--config` path is a directory: any visible file in it counts.
    any_visible: bool,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Files => "files",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

impl ReloadReport {
    /// The report as `POST /reload` answers it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "config_version": self.version,
            "config_hash": self.hash,
            "changed": self.changed,
            "warnings": self.warnings,
        })
    }
}

impl ReloadState {
    pub(crate) fn new(
        source: Option<ConfigSource>,
        resolver: Resolver,
        dns_refresh: Duration,
        runtime_opts: RuntimeOptions,
    ) -> Self {
        ReloadState {
            source,
            resolver,
            dns_refresh,
            runtime_opts,
            version: AtomicU64::new(1),
            lock: Mutex::new(()),
            last: StdMutex::new(None),
            discovery: Mutex::new(DiscoverySet::default()),
        }
    }

    pub(crate) fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub(crate) fn dns_refresh(&self) -> Duration {
        self.dns_refresh
    }

    /// The running config version (1 at start-up).
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// `/server_info`'s view of the last reload, or null before the first.
    pub(crate) fn last_json(&self) -> serde_json::Value {
        let last = match self.last.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match last {
            None => serde_json::Value::Null,
            Some(l) => serde_json::json!({
                "trigger": l.trigger.as_str(),
                "at_unix_s": l.at_unix_s,
                "ok": l.ok,
                "problems": l.problems,
            }),
        }
    }

    fn record(&self, trigger: Trigger, ok: bool, problems: usize) {
        let at_unix_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = LastReload {
            trigger,
            at_unix_s,
            ok,
            problems,
        };
        match self.last.lock() {
            Ok(mut g) => *g = Some(entry),
            Err(poisoned) => *poisoned.into_inner() = Some(entry),
        }
    }
}

impl DiscoverySet {
    /// Makes the watches match `runtime`'s clusters: a cluster whose DNS target and upstream are
    /// unchanged keeps its feed; one with the same target but a new upstream keeps the watch
    /// (no new lookups) and gets a new feeder; new targets get new watches, waited on for up to
    /// [`STARTUP_DISCOVERY_WAIT`]. The same for the names of TCP virtual services that share a
    /// port ([`Runtime::tcp_service_addrs`]). Returns the watches no longer needed, to drop
    /// after the swap.
    pub(crate) async fn sync(
        &mut self,
        runtime: &Runtime,
        resolver: &Resolver,
        refresh: Duration,
    ) -> Retired {
        let (retired_services, fresh_services) = self.sync_services(runtime, resolver, refresh);
        let mut old = std::mem::take(&mut self.feeds);
        let mut fresh = Vec::new();
        for (cluster, upstream) in runtime.snapshot().clusters.iter().zip(runtime.clusters()) {
            let Some(target) = dns_target(&cluster.discovery, cluster.port, refresh) else {
                upstream.set_endpoints(&[]);
                continue;
            };
            if let Some(i) = old
                .iter()
                .position(|f| f.target == target && Arc::ptr_eq(&f.upstream, upstream))
            {
                self.feeds.push(old.swap_remove(i));
                continue;
            }
            let watch = match old.iter().position(|f| f.target == target) {
                Some(i) => old.swap_remove(i).watch,
                None => {
                    fresh.push(self.feeds.len());
                    outrider_discovery::watch(resolver.clone(), target.clone())
                }
            };
            self.feeds
                .push(Feed::start(target, upstream.clone(), watch));
        }
        let _ = tokio::time::timeout(STARTUP_DISCOVERY_WAIT, async {
            for &i in &fresh {
                if let Some(f) = self.feeds.get_mut(i) {
                    f.watch.ready().await;
                }
            }
            for &i in &fresh_services {
                if let Some(f) = self.services.get_mut(i) {
                    f.watch.ready().await;
                }
            }
        })
        .await;
        // The feeders may not have run yet: publish what the first answers said now.
        for &i in &fresh {
            if let Some(f) = self.feeds.get(i) {
                f.upstream.set_endpoints(&f.watch.current());
            }
        }
        for &i in &fresh_services {
            if let Some(f) = self.services.get(i) {
                f.publish(&f.watch.current());
            }
        }
        Retired {
            _feeds: old,
            _services: retired_services,
        }
    }

    /// Matches the service-name watches to `runtime`, as `sync` does for clusters. Returns
    /// the watches no longer needed and the indexes of the new ones.
    fn sync_services(
        &mut self,
        runtime: &Runtime,
        resolver: &Resolver,
        refresh: Duration,
    ) -> (Vec<ServiceFeed>, Vec<usize>) {
        let mut old = std::mem::take(&mut self.services);
        let mut fresh = Vec::new();
        for addrs in runtime.tcp_service_addrs() {
            if let Some(i) = old.iter().position(|f| Arc::ptr_eq(&f.addrs, addrs)) {
                self.services.push(old.swap_remove(i));
                continue;
            }
            let watch = match old.iter().position(|f| f.addrs.name() == addrs.name()) {
                Some(i) => old.swap_remove(i).watch,
                None => {
                    fresh.push(self.services.len());
                    let mut target = DnsTarget::new(addrs.name(), addrs.port());
                    target.refresh = refresh;
                    outrider_discovery::watch(resolver.clone(), target)
                }
            };
            self.services.push(ServiceFeed::start(addrs.clone(), watch));
        }
        (old, fresh)
    }
}

impl ServiceFeed {
    fn start(addrs: Arc<ServiceAddrs>, watch: Watch) -> ServiceFeed {
        let mut rx = watch.receiver();
        let fed = addrs.clone();
        let feeder = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let endpoints = rx.borrow_and_update().clone();
                tracing::debug!(
                    service = fed.name(),
                    addresses = endpoints.len(),
                    "virtual service addresses changed"
                );
                fed.set(endpoints.iter().map(std::net::SocketAddr::ip));
            }
        });
        let feed = ServiceFeed {
            addrs,
            watch,
            _feeder: AbortOnDrop(feeder),
        };
        feed.publish(&feed.watch.current());
        feed
    }

    fn publish(&self, endpoints: &[std::net::SocketAddr]) {
        self.addrs
            .set(endpoints.iter().map(std::net::SocketAddr::ip));
    }
}

impl Feed {
    fn start(target: DnsTarget, upstream: Arc<Upstream>, watch: Watch) -> Feed {
        let mut rx = watch.receiver();
        upstream.set_endpoints(&rx.borrow_and_update());
        let fed = upstream.clone();
        let feeder = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let endpoints = rx.borrow_and_update().clone();
                tracing::debug!(
                    cluster = fed.name(),
                    endpoints = endpoints.len(),
                    "endpoints changed"
                );
                fed.set_endpoints(&endpoints);
            }
        });
        Feed {
            target,
            upstream,
            watch,
            _feeder: AbortOnDrop(feeder),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WatchPlan {
    fn new(paths: &[PathBuf]) -> WatchPlan {
        let mut plan = WatchPlan::default();
        for p in paths {
            let dir = if p.is_dir() {
                plan.any_visible = true;
                p.clone()
            } else {
                if let Some(name) = p.file_name() {
                    plan.files.push(name.to_os_string());
                }
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                    _ => PathBuf::from("."),
                }
            };
            if !plan.dirs.contains(&dir) {
                plan.dirs.push(dir);
            }
        }
        plan
    }

    /// True when a change to `path` may change the configuration.
    fn relevant(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return true;
        };
        let text = name.to_string_lossy();
        // Kubernetes ConfigMaps publish by renaming the `..data` symlink.
        if text.starts_with("..") || self.files.iter().any(|f| f == name) {
            return true;
        }
        // Editors' swap and backup files are not configuration.
        self.any_visible && !text.starts_with('.') && !text.ends_with('~')
    }
}

/// The DNS target of a cluster, or None when the cluster has no discovery.
pub(crate) fn dns_target(discovery: &Discovery, port: u16, refresh: Duration) -> Option<DnsTarget> {
    let Discovery::Dns {
        hostname,
        response_type,
        ip_preference,
    } = discovery
    else {
        return None;
    };
    use outrider_config::{IpPreference as C, ResponseType as R};
    use outrider_discovery::{IpPreference as D, ResponseType as S};
    Some(DnsTarget {
        hostname: hostname.clone(),
        port,
        response_type: match response_type {
            R::Endpoints => S::Endpoints,
            R::LoadBalancer => S::LoadBalancer,
        },
        ip_preference: match ip_preference {
            C::Any => D::Any,
            C::Ipv4Only => D::Ipv4Only,
            C::Ipv6Only => D::Ipv6Only,
            C::Ipv4Preferred => D::Ipv4Preferred,
            C::Ipv6Preferred => D::Ipv6Preferred,
        },
        refresh,
    })
}

/// Re-reads the configuration and, when it is valid and different, swaps a new runtime in.
/// Requests in flight keep the runtime they started with. A refused configuration is logged
/// problem by problem and counted; the running one stays.
pub(crate) async fn reload(shared: &Shared, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
    let state = &shared.reload;
    let Some(source) = state.source.clone() else {
        return Err(ReloadError::NotConfigured);
    };
    let _serial = state.lock.lock().await;
    let built = tokio::task::spawn_blocking(move || {
        outrider_config::build(&source.paths, &source.selector)
    })
    .await;
    let built = match built {
        Ok(Ok(built)) => built,
        Ok(Err(problems)) => {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(refuse(state, trigger, lines));
        }
        Err(join) => return Err(refuse(state, trigger, vec![join.to_string()])),
    };
    for w in &built.warnings {
        tracing::warn!("{w}");
    }
    let old = shared.runtime.load_full();
    if !old.is_transparent() && old.snapshot().hash == built.snapshot.hash {
        metrics::counter!(RELOAD_TOTAL).increment(1);
        state.record(trigger, true, 0);
        tracing::info!(
            trigger = trigger.as_str(),
            hash = %built.snapshot.hash,
            "config reload: unchanged"
        );
        return Ok(ReloadReport {
            version: state.version(),
            hash: built.snapshot.hash,
            changed: false,
            warnings: built.warnings.len(),
        });
    }
    let hash = built.snapshot.hash.clone();
    let next = Runtime::new(Arc::new(built.snapshot), Some(&old), state.runtime_opts);
    let retired = state
        .discovery
        .lock()
        .await
        .sync(&next, &state.resolver, state.dns_refresh)
        .await;
    shared.runtime.store(Arc::new(next));
    drop(retired);
    let version = state.version.fetch_add(1, Ordering::AcqRel) + 1;
    metrics::counter!(RELOAD_TOTAL).increment(1);
    state.record(trigger, true, 0);
    tracing::info!(trigger = trigger.as_str(), version, hash = %hash, "config reloaded");
    Ok(ReloadReport {
        version,
        hash,
        changed: true,
        warnings: built.warnings.len(),
    })
}

fn refuse(state: &ReloadState, trigger: Trigger, problems: Vec<String>) -> ReloadError {
    for p in &problems {
        tracing::error!(trigger = trigger.as_str(), "config reload: {p}");
    }
    tracing::error!(
        trigger = trigger.as_str(),
        problems = problems.len(),
        "config reload refused; the running configuration stays"
    );
    metrics::counter!(RELOAD_FAILURES_TOTAL).increment(1);
    state.record(trigger, false, problems.len());
    ReloadError::Refused(problems)
}

/// Watches the directories of the `--config` paths (not the files: a ConfigMap swaps a
/// symlink, which a file watch misses) and reloads after each burst of changes, until `stop`.
pub(crate) fn spawn_watcher(
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<(), notify::Error> {
    let Some(source) = &shared.reload.source else {
        return Ok(());
    };
    let plan = WatchPlan::new(&source.paths);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let filter = plan.clone();
    // Runs on notify's own thread: only hand a wake-up to tokio, never block.
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Reading the files ourselves opens them: never a reason to reload.
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
            Ok(ev) if ev.paths.is_empty() || ev.paths.iter().any(|p| filter.relevant(p)) => {
                // Full means a reload is already pending, which will see this change too.
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "config watch error"),
        }
    })?;
    for dir in &plan.dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            tokio::time::sleep(RELOAD_DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let _ = reload(&shared, Trigger::Files).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_configs_watch_the_parent_and_only_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, "x").unwrap();
        let plan = WatchPlan::new(std::slice::from_ref(&file));
        assert_eq!(plan.dirs, vec![dir.path().to_path_buf()]);
        assert!(plan.relevant(&file));
        assert!(plan.relevant(&dir.path().join("..data")));
        assert!(plan.relevant(&dir.path().join("..2026_11_26_12_00_00.1")));
        assert!(!plan.relevant(&dir.path().join("other.yaml")));
    }

    #[test]
    fn directory_configs_take_visible_files() {
        let dir = tempfile::tempdir().unwrap();
        let plan = WatchPlan::new(&[dir.path().to_path_buf()]);
        assert_eq!(plan.dirs, vec![dir.path().to_path_buf()]);
        assert!(plan.relevant(&dir.path().join("routes.json")));
        assert!(!plan.relevant(&dir.path().join(".routes.json.swp")));
        assert!(!plan.relevant(&dir.path().join("routes.json~")));
    }

    #[test]
    fn a_bare_file_name_watches_the_current_directory() {
        let plan = WatchPlan::new(&[PathBuf::from("mesh-that-does-not-exist.yaml")]);
        assert_eq!(plan.dirs, vec![PathBuf::from(".")]);
    }

    #[test]
    fn dns_targets_follow_discovery() {
        assert_eq!(
            dns_target(&Discovery::None, 80, Duration::from_secs(5)),
            None
        );
        let t = dns_target(
            &Discovery::Dns {
                hostname: "a.local".into(),
                response_type: outrider_config::ResponseType::LoadBalancer,
                ip_preference: outrider_config::IpPreference::Ipv6Only,
            },
            8080,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(t.hostname, "a.local");
        assert_eq!(t.port, 8080);
        assert_eq!(
            t.response_type,
            outrider_discovery::ResponseType::LoadBalancer
        );
        assert_eq!(t.ip_preference, outrider_discovery::IpPreference::Ipv6Only);
    }
}
