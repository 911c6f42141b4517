#[postbox::service]
pub trait Sink {
    fn take(&self, items: impl Iterator<Item = u8>) -> u64;
}

fn main() {}
