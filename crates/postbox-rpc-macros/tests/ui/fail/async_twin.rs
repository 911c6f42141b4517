#[postbox::service]
pub trait Fetch {
    fn get(&self) -> u8;
    fn get_async(&self) -> u8;
}

fn main() {}
