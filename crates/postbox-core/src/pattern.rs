//! Name patterns, for topic subscriptions and policy rules: `/`-separated segments where `*`
//! matches one segment and a final `**` one or more further segments.

use std::fmt;

use crate::name::PortName;

/// A parsed name pattern, such as `robot/*/joints` or `sensors/**`. A pattern without
/// wildcards matches exactly one name; `**` alone matches every name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamePattern(Vec<String>);

/// Why a text is not a [`NamePattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a name pattern (name characters, `*` segments, a final `**`)")]
pub struct PatternError(pub String);

impl NamePattern {
    /// Checks `text` and splits it into segments.
    ///
    /// # Errors
    /// [`PatternError`] when it is empty, too long, has a `**` that is not last, or a segment
    /// with characters a name may not have.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let bad = || PatternError(text.chars().take(64).collect());
        if text.is_empty() || text.len() > PortName::MAX_LEN {
            return Err(bad());
        }
        let segments: Vec<String> = text.split('/').map(str::to_owned).collect();
        for (index, segment) in segments.iter().enumerate() {
            let wildcard = segment == "*" || (segment == "**" && index == segments.len() - 1);
            // `#inbox/<uid>` names the inboxes of a user's nodes (no port can be named so).
            let inboxes = index == 0 && segment == INBOXES;
            if !wildcard && !inboxes && !segment.is_empty() && PortName::new(segment).is_err() {
                return Err(bad());
            }
        }
        Ok(Self(segments))
    }

    /// True when `name` matches.
    #[must_use]
    pub fn matches(&self, name: &PortName) -> bool {
        self.matches_text(name.as_str())
    }

    /// True when the name (or inbox pseudo-name) `name` matches.
    #[must_use]
    pub fn matches_text(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('/').collect();
        for (index, segment) in self.0.iter().enumerate() {
            if segment == "**" {
                return parts.len() > index;
            }
            match parts.get(index) {
                Some(part) if segment == "*" || segment == part => {}
                _ => return false,
            }
        }
        parts.len() == self.0.len()
    }

    /// True when every name `other` matches, `self` matches too: a policy rule for `self`
    /// covers a subscription to `other`.
    #[must_use]
    pub fn covers(&self, other: &Self) -> bool {
        for (index, segment) in self.0.iter().enumerate() {
            if segment == "**" {
                return other.0.len() > index;
            }
            match other.0.get(index).map(String::as_str) {
                Some("**") | None => return false,
                Some(part) if segment == "*" || segment == part => {}
                Some(_) => return false,
            }
        }
        other.0.len() == self.0.len()
    }
}

/// The first segment of the pseudo-names of inboxes, `#inbox/<uid>`.
pub const INBOXES: &str = "#inbox";

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> NamePattern {
        NamePattern::parse(text).unwrap()
    }

    fn n(text: &str) -> PortName {
        PortName::new(text).unwrap()
    }

    #[test]
    fn patterns_match_whole_segments() {
        assert!(p("robot/*/joints").matches(&n("robot/arm/joints")));
        assert!(!p("robot/*/joints").matches(&n("robot/arm/left/joints")));
        assert!(p("sensors/**").matches(&n("sensors/a/b")));
        assert!(!p("sensors/**").matches(&n("sensors")));
        assert!(p("**").matches(&n("anything/at/all")));
        assert!(p("calc").matches(&n("calc")));
        assert!(!p("calc").matches(&n("calc2")));
        assert!(p("/sensors/*").matches(&n("/sensors/imu")));
        assert!(!p("/sensors/*").matches(&n("/sensors")));
    }

    #[test]
    fn inbox_pseudo_names_match_only_inbox_patterns() {
        assert!(p("#inbox/*").matches_text("#inbox/1000"));
        assert!(p("#inbox/1000").matches_text("#inbox/1000"));
        assert!(p("**").matches_text("#inbox/1000"), "everything includes the inboxes");
        assert!(!p("inbox/*").matches_text("#inbox/1000"));
        assert!(NamePattern::parse("a/#inbox").is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for text in ["", "a/**/b", "a b", "x/#"] {
            assert!(NamePattern::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_pattern_covers_only_patterns_whose_every_match_it_matches() {
        assert!(p("**").covers(&p("a/**")));
        assert!(p("sensors/**").covers(&p("sensors/*/temp")));
        assert!(p("sensors/*").covers(&p("sensors/x")));
        assert!(!p("sensors/*").covers(&p("sensors/**")));
        assert!(!p("sensors/x").covers(&p("sensors/*")));
        assert!(!p("a/**").covers(&p("**")));
        assert!(!p("a/*").covers(&p("a")));
        assert!(p("a/*/c").covers(&p("a/*/c")));
    }
}
