pub struct NotSerde;

#[postbox::service]
pub trait Calc {
    fn take(&self, x: NotSerde) -> u64;
}

fn main() {}
