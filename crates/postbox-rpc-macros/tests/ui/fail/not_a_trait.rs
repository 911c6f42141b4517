#[postbox::service]
pub struct Calc;

fn main() {}
