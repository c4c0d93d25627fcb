//! Line and column of elements in a request body, for issues found after
//! parsing (validation works on the parsed value, which has no positions).
//!
//! Only error responses need positions, so instead of carrying positions
//! through every parsed value, the body is scanned once more when an
//! OperationOutcome is built. The scanner assumes the body is JSON that
//! already parsed: it never fails, it only stops finding things.

use std::collections::{HashMap, HashSet};

use super::Issue;

/// 1-based line and column (in characters) of byte `offset` in `text`: how
/// every located message in Sprig (JSON bodies, mapping files, the endpoint
/// registry, FHIRPath expressions) names a place. An offset past the end, or
/// inside a character, counts as the end.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Sets `position` on every issue whose `expression` names an element of
/// `body` (a resource of type `root`): the element's own position, or, for
/// an element that is missing, the position of the nearest enclosing one.
pub fn locate_issues(body: &[u8], root: &str, issues: &mut [Issue]) {
    let wanted: Vec<Option<Vec<Step>>> = issues
        .iter()
        .map(|issue| issue.expression.as_deref().and_then(|e| steps(e, root)))
        .collect();
    if wanted.iter().all(Option::is_none) {
        return;
    }
    // Only the paths asked about, and their prefixes (the fallbacks for a
    // missing element), are recorded: a large body with a few issues then
    // costs one scan and a handful of entries, not an entry per value.
    let mut prefixes: HashSet<&[Step]> = HashSet::new();
    for steps in wanted.iter().flatten() {
        prefixes.extend((0..=steps.len()).map(|len| &steps[..len]));
    }
    let positions = Scanner::new(body, &prefixes).positions();
    for (issue, steps) in issues.iter_mut().zip(&wanted) {
        let Some(steps) = steps else { continue };
        if issue.position.is_some() {
            continue;
        }
        // The longest prefix of the path that is in the body.
        for len in (0..=steps.len()).rev() {
            if let Some(&(line, column)) = positions.get(&steps[..len]) {
                issue.position = Some((line, column));
                break;
            }
        }
    }
}

/// One step of a path into the JSON: a property or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Step {
    Key(String),
    Index(usize),
}

/// `ServiceRequest.note[1].time` → [note, 1, time]; `None` when the
/// expression is not a plain path from `root` (an invariant's, say).
fn steps(expression: &str, root: &str) -> Option<Vec<Step>> {
    let rest = expression.strip_prefix(root)?;
    let mut steps = Vec::new();
    for part in rest.split('.').skip(1) {
        let (name, mut indices) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        // `value[x]` names a choice, not a property: stop at its parent.
        if indices.starts_with("[x]") {
            break;
        }
        if name.is_empty() {
            return None;
        }
        steps.push(Step::Key(name.to_owned()));
        while let Some(inner) = indices.strip_prefix('[') {
            let end = inner.find(']')?;
            steps.push(Step::Index(inner[..end].parse().ok()?));
            indices = &inner[end + 1..];
        }
    }
    Some(steps)
}

/// A forgiving JSON scanner recording where each value starts (for a
/// property: where its key starts, which is what an editor should show).
struct Scanner<'b, 'w> {
    body: &'b [u8],
    /// The paths whose positions are wanted.
    wanted: &'w HashSet<&'w [Step]>,
    at: usize,
    line: usize,
    column: usize,
    path: Vec<Step>,
    positions: HashMap<Vec<Step>, (usize, usize)>,
}

impl<'b, 'w> Scanner<'b, 'w> {
    fn new(body: &'b [u8], wanted: &'w HashSet<&'w [Step]>) -> Self {
        Self {
            body,
            wanted,
            at: 0,
            line: 1,
            column: 1,
            path: Vec::new(),
            positions: HashMap::new(),
        }
    }

    fn positions(mut self) -> HashMap<Vec<Step>, (usize, usize)> {
        self.skip_space();
        self.positions.insert(Vec::new(), (self.line, self.column));
        self.value(0);
        self.positions
    }

    fn peek(&self) -> Option<u8> {
        self.body.get(self.at).copied()
    }

    fn bump(&mut self) {
        if let Some(byte) = self.peek() {
            self.at += 1;
            if byte == b'\n' {
                self.line += 1;
                self.column = 1;
            } else if byte & 0xC0 != 0x80 {
                // Columns count characters, not UTF-8 continuation bytes.
                self.column += 1;
            }
        }
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn value(&mut self, depth: usize) {
        // Far deeper than the parser allows: the body cannot be this deep.
        if depth > 512 {
            self.at = self.body.len();
            return;
        }
        self.skip_space();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                // A string value: only its end matters, not its text.
                self.skip_string();
            }
            Some(_) => {
                while matches!(self.peek(), Some(b) if !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    self.bump();
                }
            }
            None => {}
        }
    }

    /// Moves past a string; whether it was closed.
    fn skip_string(&mut self) -> bool {
        self.bump();
        while let Some(byte) = self.peek() {
            match byte {
                b'\\' => {
                    self.bump();
                    self.bump();
                }
                b'"' => {
                    self.bump();
                    return true;
                }
                _ => self.bump(),
            }
        }
        false
    }

    /// A key's text.
    fn string(&mut self) -> String {
        let start = self.at;
        if !self.skip_string() {
            return String::new();
        }
        let quoted = &self.body[start..self.at];
        let text = &quoted[1..quoted.len() - 1];
        if !text.contains(&b'\\') {
            return String::from_utf8_lossy(text).into_owned();
        }
        // Keys in FHIR are ASCII names; an escaped key is decoded properly
        // in the rare case it occurs.
        serde_json::from_slice::<String>(quoted)
            .unwrap_or_else(|_| String::from_utf8_lossy(text).into_owned())
    }

    /// Records where the value at the current path starts, if it is wanted.
    fn record(&mut self, position: (usize, usize)) {
        if self.wanted.contains(self.path.as_slice()) {
            self.positions.insert(self.path.clone(), position);
        }
    }

    fn object(&mut self, depth: usize) {
        self.bump();
        loop {
            self.skip_space();
            match self.peek() {
                Some(b'"') => {
                    let position = (self.line, self.column);
                    let key = self.string();
                    self.skip_space();
                    if self.peek() == Some(b':') {
                        self.bump();
                    }
                    self.path.push(Step::Key(key));
                    self.record(position);
                    self.value(depth + 1);
                    self.path.pop();
                }
                Some(b',') => self.bump(),
                Some(b'}') => {
                    self.bump();
                    return;
                }
                _ => return,
            }
        }
    }

    fn array(&mut self, depth: usize) {
        self.bump();
        let mut index = 0;
        loop {
            self.skip_space();
            match self.peek() {
                Some(b',') => {
                    self.bump();
                    index += 1;
                }
                Some(b']') => {
                    self.bump();
                    return;
                }
                Some(_) => {
                    self.path.push(Step::Index(index));
                    self.record((self.line, self.column));
                    let before = self.at;
                    self.value(depth + 1);
                    self.path.pop();
                    if self.at == before {
                        return;
                    }
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::IssueType;

    fn located(body: &str, expression: &str) -> Option<(usize, usize)> {
        let mut issues = [Issue::error(IssueType::Value, "x", "x").at(expression)];
        locate_issues(body.as_bytes(), "ServiceRequest", &mut issues);
        issues[0].position
    }

    #[test]
    fn finds_properties_and_array_items() {
        let body = "{\n  \"resourceType\": \"ServiceRequest\",\n  \"note\": [\n    {\"text\": \"a\"},\n    {\"text\": \"Łódź\", \"time\": \"x\"}\n  ]\n}";
        assert_eq!(located(body, "ServiceRequest.note[1].time"), Some((5, 22)));
        assert_eq!(located(body, "ServiceRequest.note[1]"), Some((5, 5)));
        assert_eq!(located(body, "ServiceRequest.note"), Some((3, 3)));
        // Missing: the nearest enclosing element.
        assert_eq!(located(body, "ServiceRequest.note[0].author"), Some((4, 5)));
        assert_eq!(located(body, "ServiceRequest.status"), Some((1, 1)));
        assert_eq!(located(body, "ServiceRequest.occurrence[x]"), Some((1, 1)));
        // Not a path from the root: left alone.
        assert_eq!(located(body, "Patient.name"), None);
    }

    #[test]
    fn escapes_and_nesting_do_not_confuse_it() {
        let body = r#"{"resourceType":"ServiceRequest","note":[{"text":"a \"quoted\" ] } text"}],"status":"x"}"#;
        assert_eq!(located(body, "ServiceRequest.status"), Some((1, 76)));
    }

    #[test]
    fn escaped_keys_are_decoded_and_unasked_paths_skipped() {
        let body =
            r#"{"resourceType":"ServiceRequest","note":[{"text":"\u0022"}],"st\u0061tus":"x"}"#;
        assert_eq!(located(body, "ServiceRequest.status"), Some((1, 61)));
        assert_eq!(located(body, "ServiceRequest.note[0].text"), Some((1, 43)));
        // An unterminated key: the scanner stops, the root remains.
        assert_eq!(located("{\"note", "ServiceRequest.note"), Some((1, 1)));
    }
}
