//! Port names: what a name may contain, checked once at the edge.

use std::fmt;

/// A validated port name, such as `calc` or `robot/arm/joints`.
///
/// 1 to [`PortName::MAX_LEN`] bytes of ASCII letters, digits and `_ - . / @ :`; it may not
/// start with `#`, which is reserved for the broker's own names (inboxes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortName(String);

/// Why a text is not a valid [`PortName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("port name is empty")]
    Empty,
    /// The name is longer than [`PortName::MAX_LEN`] bytes.
    #[error("port name is {0} bytes long, the limit is {max}", max = PortName::MAX_LEN)]
    TooLong(usize),
    /// The name contains a character outside the allowed set.
    #[error("port name contains {0:?}; allowed are ASCII letters, digits and _-./@:")]
    BadCharacter(char),
}

impl PortName {
    /// The longest name, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Checks `name` and wraps it.
    ///
    /// # Errors
    /// [`NameError`] says which rule the name breaks.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > Self::MAX_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(NameError::BadCharacter(bad));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@' | ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_for_length_and_characters() {
        assert_eq!(PortName::new("calc").unwrap().as_str(), "calc");
        assert!(PortName::new("robot/arm-1.joints@host:x").is_ok());
        assert_eq!(PortName::new(""), Err(NameError::Empty));
        assert_eq!(PortName::new("#1.1"), Err(NameError::BadCharacter('#')));
        assert_eq!(PortName::new("a b"), Err(NameError::BadCharacter(' ')));
        assert_eq!(PortName::new(&"x".repeat(256)), Err(NameError::TooLong(256)));
    }
}
