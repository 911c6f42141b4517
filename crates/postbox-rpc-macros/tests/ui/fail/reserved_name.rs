#[postbox::service]
pub trait Catalog {
    fn schema(&self) -> String;
}

fn main() {}
