//! Locations inside a resource, rendered as FHIRPath-style expressions
//! (`ServiceRequest.note[1].text`) for `OperationOutcome.issue.expression`.

use std::fmt;
use std::sync::Arc;

/// One step into a JSON document: a property name or an array index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    /// A property of an object.
    Key(Arc<str>),
    /// A position in an array.
    Index(usize),
}

/// A path from the root of a resource to one of its elements.
///
/// A persistent list: extending a path shares its parent instead of
/// copying it, because the validator builds a path for every element it
/// visits and renders one only for the few that have issues.
#[derive(Clone, Default)]
pub struct ElementPath {
    last: Option<Arc<Link>>,
}

struct Link {
    parent: Option<Arc<Link>>,
    segment: Segment,
}

impl ElementPath {
    /// The root of the document.
    pub fn root() -> Self {
        Self::default()
    }

    /// Builds a path from its segments.
    pub fn from_segments(segments: Vec<Segment>) -> Self {
        segments
            .into_iter()
            .fold(Self::root(), |path, segment| path.push(segment))
    }

    fn push(&self, segment: Segment) -> Self {
        Self {
            last: Some(Arc::new(Link {
                parent: self.last.clone(),
                segment,
            })),
        }
    }

    /// This path extended by a property name.
    pub fn key(&self, key: impl Into<Arc<str>>) -> Self {
        self.push(Segment::Key(key.into()))
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        self.push(Segment::Index(index))
    }

    /// This path followed by `other`.
    pub fn join(&self, other: &ElementPath) -> Self {
        other
            .segments()
            .into_iter()
            .fold(self.clone(), |path, segment| path.push(segment))
    }

    /// The segments, root first.
    pub fn segments(&self) -> Vec<Segment> {
        let mut segments = Vec::new();
        let mut link = self.last.as_deref();
        while let Some(current) = link {
            segments.push(current.segment.clone());
            link = current.parent.as_deref();
        }
        segments.reverse();
        segments
    }

    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.last.is_none()
    }

    /// Parses an RFC 6901 JSON pointer (`/note/1/text`). Numeric segments
    /// become indices: FHIR property names never start with a digit.
    pub fn from_json_pointer(pointer: &str) -> Self {
        let segments = pointer
            .split('/')
            .skip(1)
            .map(|raw| {
                let unescaped = raw.replace("~1", "/").replace("~0", "~");
                match unescaped.parse::<usize>() {
                    Ok(index) if !unescaped.is_empty() => Segment::Index(index),
                    _ => Segment::Key(unescaped.into()),
                }
            })
            .collect();
        Self::from_segments(segments)
    }

    /// Renders the path as a FHIRPath-style expression rooted at `root`
    /// (normally the resource type): `ServiceRequest.note[1].text`.
    pub fn to_expression(&self, root: &str) -> String {
        let mut out = String::from(root);
        for segment in self.segments() {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&key);
                }
                Segment::Index(index) => {
                    out.push('[');
                    out.push_str(&index.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

impl PartialEq for ElementPath {
    fn eq(&self, other: &Self) -> bool {
        self.segments() == other.segments()
    }
}

impl Eq for ElementPath {}

impl PartialOrd for ElementPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ElementPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.segments().cmp(&other.segments())
    }
}

impl std::hash::Hash for ElementPath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.segments().hash(state);
    }
}

impl fmt::Debug for ElementPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ElementPath({})", self.to_expression(""))
    }
}

impl fmt::Display for ElementPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_expression(""))
    }
}

/// A path to a value being read, kept on the stack as a linked list (each
/// level's link lives in its caller's frame) and only turned into an
/// [`ElementPath`] when it is needed: when something is wrong there, or a
/// value was found. Walking a document costs no allocation per property.
pub(crate) enum PathLink<'a> {
    /// The document itself.
    Root,
    /// A property of the parent.
    Key(&'a PathLink<'a>, &'a str),
    /// An item of the parent array.
    Index(&'a PathLink<'a>, usize),
}

impl PathLink<'_> {
    /// The path as an [`ElementPath`].
    pub(crate) fn to_path(&self) -> ElementPath {
        let mut segments = Vec::new();
        let mut link = self;
        loop {
            match link {
                PathLink::Root => break,
                PathLink::Key(parent, key) => {
                    segments.push(Segment::Key((*key).into()));
                    link = parent;
                }
                PathLink::Index(parent, index) => {
                    segments.push(Segment::Index(*index));
                    link = parent;
                }
            }
        }
        segments.reverse();
        ElementPath::from_segments(segments)
    }

    /// Whether this is an item of an array.
    pub(crate) fn is_array_item(&self) -> bool {
        matches!(self, PathLink::Index(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fhirpath_style_expressions() {
        let path = ElementPath::root().key("note").index(1).key("text");
        assert_eq!(
            path.to_expression("ServiceRequest"),
            "ServiceRequest.note[1].text"
        );
        assert_eq!(path.to_string(), "note[1].text");
        assert_eq!(ElementPath::root().to_expression("Patient"), "Patient");
    }

    #[test]
    fn parses_json_pointers_with_escapes() {
        let path = ElementPath::from_json_pointer("/contained/0/a~1b/c~0d");
        assert_eq!(path.to_expression("X"), "X.contained[0].a/b.c~d");
        assert!(ElementPath::from_json_pointer("").is_root());
    }
}
