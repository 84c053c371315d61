//! Mesh and VirtualService specs.

use serde::Deserialize;

use super::IpPreferenceSpec;

/// `EgressFilter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EgressFilterType {
    AllowAll,
    DropAll,
}

/// `EgressFilter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressFilterSpec {
    #[serde(rename = "type")]
    pub type_: EgressFilterType,
}

/// `MeshServiceDiscovery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServiceDiscovery {
    pub ip_preference: Option<IpPreferenceSpec>,
}

/// `MeshSpec`. Every field is optional; an absent spec is the default spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    /// Default is `DROP_ALL`.
    pub egress_filter: Option<EgressFilterSpec>,
    pub service_discovery: Option<MeshServiceDiscovery>,
}

/// `VirtualNodeServiceProvider`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualNodeProvider {
    pub virtual_node_name: String,
}

/// `VirtualRouterServiceProvider`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualRouterProvider {
    pub virtual_router_name: String,
}

/// `VirtualServiceProvider`: a node or a router.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VirtualServiceProvider {
    VirtualNode(VirtualNodeProvider),
    VirtualRouter(VirtualRouterProvider),
}

/// `VirtualServiceSpec`. A service without a provider has no endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    pub provider: Option<VirtualServiceProvider>,
}
