#[postbox::service]
pub trait Log {
    #[oneway]
    fn write(&self, line: String) -> bool;
}

fn main() {}
