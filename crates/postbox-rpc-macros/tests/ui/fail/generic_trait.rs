#[postbox::service]
pub trait Store<T> {
    fn get(&self) -> T;
}

fn main() {}
