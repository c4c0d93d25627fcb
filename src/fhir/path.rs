//! Locations inside a resource, rendered as FHIRPath-style expressions
//! (`ServiceRequest.note[1].text`) for `OperationOutcome.issue.expression`.

use std::fmt;

/// One step into a JSON document: a property name or an array index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    /// A property of an object.
    Key(String),
    /// A position in an array.
    Index(usize),
}

/// A path from the root of a resource to one of its elements.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElementPath {
    segments: Vec<Segment>,
}

impl ElementPath {
    /// The root of the document.
    pub fn root() -> Self {
        Self::default()
    }

    /// Builds a path from its segments.
    pub fn from_segments(segments: Vec<Segment>) -> Self {
        Self { segments }
    }

    /// This path extended by a property name.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.segments.clone();
        segments.push(Segment::Key(key.into()));
        Self { segments }
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.segments.clone();
        segments.push(Segment::Index(index));
        Self { segments }
    }

    /// This path followed by `other`.
    pub fn join(&self, other: &ElementPath) -> Self {
        let mut segments = self.segments.clone();
        segments.extend(other.segments.iter().cloned());
        Self { segments }
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
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
                    _ => Segment::Key(unescaped),
                }
            })
            .collect();
        Self { segments }
    }

    /// Renders the path as a FHIRPath-style expression rooted at `root`
    /// (normally the resource type): `ServiceRequest.note[1].text`.
    pub fn to_expression(&self, root: &str) -> String {
        let mut out = String::from(root);
        for segment in &self.segments {
            match segment {
                Segment::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
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

impl fmt::Display for ElementPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_expression(""))
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
