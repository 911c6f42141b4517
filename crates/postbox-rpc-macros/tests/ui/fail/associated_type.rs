#[postbox::service]
pub trait Source {
    type Item;
    fn next(&self) -> u64;
}

fn main() {}
