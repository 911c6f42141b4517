//! Where a walk through a shape is: the path for errors, the depth, the named types around it.

use serde_json::Value;

use super::{JsonError, JsonErrorKind, MAX_DEPTH};
use crate::shape::Shape;

/// The result of one step of a walk. The error is boxed to keep the stack frames of the
/// recursive walk small (a deep value is many frames deep).
pub(super) type Step<T> = Result<T, Box<JsonError>>;

/// The path, depth and enclosing named types of a walk through a shape.
pub(super) struct Trail<'s> {
    path: String,
    depth: usize,
    /// The `Shape::Named` being walked, outermost first: what `Shape::Recursive` refers to.
    named: Vec<&'s Shape>,
}

impl<'s> Trail<'s> {
    pub(super) fn new(path: &str) -> Self {
        Self { path: path.to_owned(), depth: 0, named: Vec::new() }
    }

    pub(super) fn error(&self, kind: JsonErrorKind) -> Box<JsonError> {
        Box::new(JsonError { path: self.path.clone(), kind })
    }

    /// Appends `.name` to the path; returns the mark to [`Trail::leave`] with.
    pub(super) fn field(&mut self, name: &str) -> usize {
        let mark = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        mark
    }

    pub(super) fn index(&mut self, index: usize) -> usize {
        let mark = self.path.len();
        self.path.push_str(&format!("[{index}]"));
        mark
    }

    pub(super) fn key(&mut self, key: &str) -> usize {
        let mark = self.path.len();
        self.path.push_str(&format!("[{}]", Value::String(key.to_owned())));
        mark
    }

    pub(super) fn leave(&mut self, mark: usize) {
        self.path.truncate(mark);
    }

    pub(super) fn nest(&mut self) -> Step<()> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(JsonErrorKind::TooDeep { limit: MAX_DEPTH }));
        }
        self.depth += 1;
        Ok(())
    }

    pub(super) fn unnest(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    pub(super) fn enter_named(&mut self, named: &'s Shape) -> Step<()> {
        self.nest()?;
        self.named.push(named);
        Ok(())
    }

    pub(super) fn leave_named(&mut self) {
        self.named.pop();
        self.unnest();
    }

    /// The innermost enclosing named type called `name`.
    pub(super) fn resolve(&self, name: &str) -> Step<&'s Shape> {
        self.named
            .iter()
            .rev()
            .find(|shape| matches!(shape, Shape::Named { name: n, .. } if n == name))
            .copied()
            .ok_or_else(|| self.error(JsonErrorKind::UnresolvedRecursive(name.to_owned())))
    }
}
