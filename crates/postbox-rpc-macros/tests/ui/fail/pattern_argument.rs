#[postbox::service]
pub trait Geo {
    fn len(&self, (x, y): (f64, f64)) -> f64;
}

fn main() {}
