//! `schema.graphql` is generated from the code; this fails when it is stale.

#[test]
fn committed_schema_matches_the_code() {
    let generated = tidewire::graphql::sdl();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql is missing: run `cargo run -- print-schema > schema.graphql`");
    assert!(
        committed == generated,
        "schema.graphql is stale: run `cargo run -- print-schema > schema.graphql`"
    );
}
