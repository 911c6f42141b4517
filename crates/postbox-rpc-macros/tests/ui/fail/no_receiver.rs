#[postbox::service]
pub trait Factory {
    fn make(seed: u64) -> u64;
}

fn main() {}
