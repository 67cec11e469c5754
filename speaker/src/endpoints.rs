//! Which nodes serve a Service, from its EndpointSlices: what `externalTrafficPolicy: Local`
//! elects among. A speaker caches every EndpointSlice of the cluster (thousands, each with
//! addresses, ports, zones and hints), so it keeps only this of each.

use herald_api::ObjectKey;
use k8s_openapi::api::discovery::v1::EndpointSlice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingNodes {
    /// The Service the slice belongs to, `namespace/name`.
    pub service: String,
    /// Nodes with a ready endpoint, sorted, each once.
    pub nodes: Vec<String>,
    /// Nodes whose endpoints all terminate but still serve (a pod in its preStop delay),
    /// sorted, each once: announced only while no node has a ready endpoint, as kube-proxy
    /// sends traffic to terminating endpoints only then.
    pub draining: Vec<String>,
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
        let mut nodes = Vec::new();
        let mut draining = Vec::new();
        let mut any_serving = false;
        for ep in slice.endpoints.into_iter().flatten() {
            let c = ep.conditions.unwrap_or_default();
            // Absent conditions count as ready (older API servers, slices written by hand);
            // `serving` is unset where only `ready` is known.
            let ready = c.ready != Some(false) && c.terminating != Some(true);
            let serving = c.serving.unwrap_or(c.ready != Some(false));
            any_serving |= ready || serving;
            match (ep.node_name, ready, serving) {
                (Some(node), true, _) => nodes.push(node),
                (Some(node), false, true) => draining.push(node),
                _ => {}
            }
        }
        for list in [&mut nodes, &mut draining] {
            list.sort();
            list.dedup();
            list.shrink_to_fit();
        }
        // A node with a ready endpoint is not draining, whatever else it runs.
        draining.retain(|n| nodes.binary_search(n).is_err());
        Some(Self {
            service: ObjectKey::new(&namespace, &service).to_string(),
            nodes,
            draining,
            any_serving,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_nodes_of_ready_endpoints_and_of_terminating_ones_still_serving() {
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
                nodes: vec!["b".into(), "e".into()],
                draining: vec!["a".into()],
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
