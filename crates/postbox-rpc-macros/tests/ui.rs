//! Compile-time behaviour of `#[postbox::service]`: what it accepts, and the errors it gives,
//! at the offending tokens, for what a service cannot have (tests/ui/fail/*.stderr; refresh
//! them with `TRYBUILD=overwrite cargo test -p postbox-rpc-macros --test ui`).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
