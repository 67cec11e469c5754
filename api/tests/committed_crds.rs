//! The CRDs in the chart are what the Rust types generate: nobody edits them by hand, and
//! nobody changes a type without regenerating them.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(herald_api::crds::CHART_CRD_DIR);
    let generated = herald_api::crds::render().expect("render CRDs");
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .expect("read chart CRD dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    committed.sort();
    let mut expected: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(
        committed, expected,
        "CRD files differ: run `cargo run -p herald-controller -- crds`"
    );
    for (name, yaml) in generated {
        let on_disk = std::fs::read_to_string(dir.join(&name)).expect("read committed CRD");
        assert!(
            on_disk == yaml,
            "{name} is stale: run `cargo run -p herald-controller -- crds`"
        );
    }
}
