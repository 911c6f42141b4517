#[postbox::service]
pub trait Maybe {
    #[cfg(feature = "extra")]
    fn extra(&self) -> u8;
}

fn main() {}
