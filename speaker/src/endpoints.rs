//! Which nodes serve a Service, from its EndpointSlices: what `externalTrafficPolicy: Local`
//! elects among. A speaker caches every EndpointSlice of the cluster (thousands, each with
//! addresses, ports, zones and hints), so it keeps only this of each.

use herald_api::ObjectKey;
use k8s_openapi::api::discovery::v1::EndpointSlice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingNodes {
    /// The Service the slice belongs to, `namespace/name`.
    pub service: String,
    /// Nodes with an endpoint that serves, sorted, each once.
    pub nodes: Vec<String>,
    /// Some endpoint serves, with or without a node (a slice written by hand often names
    /// none): the Service can take traffic at all.
    pub any_serving: bool,
}

impl ServingNodes {
    /// `None` for a slice of no Service (no `kubernetes.io/service-name` label).
    pub fn of(slice: EndpointSlice) -> Option<Self> {
        let service = slice
            .metadata
            .labels?
            .remove("kubernetes.io/service-name")?;
        let namespace = slice.metadata.namespace.unwrap_or_default();
        let serving: Vec<_> = slice
            .endpoints
            .into_iter()
            .flatten()
            .filter(|ep| {
                // `serving` says it all when set; older API servers set only `ready`
                // (absent counts as ready).
                ep.conditions
                    .as_ref()
                    .is_none_or(|c| c.serving.unwrap_or(c.ready != Some(false)))
            })
            .collect();
        let any_serving = !serving.is_empty();
        let mut nodes: Vec<String> = serving.into_iter().filter_map(|ep| ep.node_name).collect();
        nodes.sort();
        nodes.dedup();
        nodes.shrink_to_fit();
        Some(Self {
            service: ObjectKey::new(&namespace, &service).to_string(),
            nodes,
            any_serving,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_nodes_of_serving_endpoints() {
        let slice: EndpointSlice = serde_yaml_ng::from_str(
            "metadata: {name: web-abc12, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.1], nodeName: b, conditions: {ready: true, serving: true}}
- {addresses: [10.0.0.2], nodeName: a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.0.0.3], nodeName: c, conditions: {ready: false, serving: false}}
- {addresses: [10.0.0.4], nodeName: d, conditions: {ready: false}}
- {addresses: [10.0.0.5], nodeName: e}
- {addresses: [10.0.0.6], nodeName: b, conditions: {}}
- {addresses: [10.0.0.7], conditions: {ready: true}}",
        )
        .expect("yaml");
        assert_eq!(
            ServingNodes::of(slice),
            Some(ServingNodes {
                service: "shop/web".into(),
                nodes: vec!["a".into(), "b".into(), "e".into()],
                any_serving: true,
            })
        );
        // Endpoints without a node (a slice written by hand) still make a Service servable;
        // none that serves does not.
        let by_hand: EndpointSlice = serde_yaml_ng::from_str(
            "metadata: {name: db, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]",
        )
        .expect("yaml");
        let db = ServingNodes::of(by_hand).expect("a Service's slice");
        assert!(db.any_serving && db.nodes.is_empty());
        let draining: EndpointSlice = serde_yaml_ng::from_str(
            "metadata: {name: db, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1], nodeName: a, conditions: {ready: false, serving: false, terminating: true}}]",
        )
        .expect("yaml");
        assert!(
            !ServingNodes::of(draining)
                .expect("a Service's slice")
                .any_serving
        );
        let orphan: EndpointSlice = serde_yaml_ng::from_str(
            "metadata: {name: x, namespace: shop}\naddressType: IPv4\nendpoints: []",
        )
        .expect("yaml");
        assert_eq!(ServingNodes::of(orphan), None);
    }
}
