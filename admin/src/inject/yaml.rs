//! A YAML tree that keeps what Kubernetes cares about: key order, and each scalar's text with
//! its style. Plain scalars are written back exactly as they were read, so `0644`, `yes` or
//! `1.10` mean to Kubernetes' YAML 1.1 reader what they meant before; a general YAML library
//! would resolve them by YAML 1.2 and write `'0644'` (a string) or an unquoted `yes` (a bool).
//! Quoted and block scalars are strings and are written as strings. Comments are not kept,
//! so callers leave documents they do not change as the original text.

use std::fmt::Write as _;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A scalar as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar {
    /// The value (for plain scalars also the text).
    pub text: String,
    /// Plain (`true`, `8080`, `web`) or a string in any quoting or block style.
    pub plain: bool,
    /// An explicit tag, as written back (`!!str`).
    pub tag: Option<String>,
}

/// A node of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Mapping in key order.
    Map(Vec<(Node, Node)>),
    /// Sequence.
    Seq(Vec<Node>),
    /// Scalar.
    Scalar(Scalar),
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// Not YAML.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line in the document.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// Uses aliases, which cannot be rewritten without expanding them.
    #[error("line {line}: uses a YAML alias (`*name`); expand it, then inject")]
    Alias {
        /// 1-based line.
        line: usize,
    },
    /// More than one document in what should be one.
    #[error("more than one YAML document where one was expected")]
    Several,
}

impl Node {
    /// A plain scalar (numbers, booleans, names).
    pub fn plain(text: impl Into<String>) -> Self {
        Node::Scalar(Scalar {
            text: text.into(),
            plain: true,
            tag: None,
        })
    }

    /// A string, quoted when written if it needs to be.
    pub fn string(text: impl Into<String>) -> Self {
        Node::Scalar(Scalar {
            text: text.into(),
            plain: false,
            tag: None,
        })
    }

    /// A mapping from `(key, value)` pairs.
    pub fn map<const N: usize>(entries: [(&str, Node); N]) -> Self {
        Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Node::plain(k), v))
                .collect(),
        )
    }

    /// The scalar's value, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(m) => m
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|e| &e.1),
            _ => None,
        }
    }

    /// The value under `key` of a mapping, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Map(m) => m
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|e| &mut e.1),
            _ => None,
        }
    }

    /// The value at a path of keys.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |n, k| n.get(k))
    }

    /// The value at a path of keys, mutably.
    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Node> {
        path.iter().try_fold(self, |n, k| n.get_mut(k))
    }

    /// The value under `key`, inserted (at the end) as `default` when absent. `None` when
    /// `self` is not a mapping.
    pub fn entry(&mut self, key: &str, default: impl FnOnce() -> Node) -> Option<&mut Node> {
        let Node::Map(m) = self else { return None };
        let i = match m.iter().position(|(k, _)| k.as_str() == Some(key)) {
            Some(i) => i,
            None => {
                m.push((Node::plain(key), default()));
                m.len() - 1
            }
        };
        Some(&mut m[i].1)
    }

    /// Sets `key` to `value` (in place when present, else at the end).
    pub fn set(&mut self, key: &str, value: Node) {
        if let Some(slot) = self.entry(key, || Node::Map(Vec::new())) {
            *slot = value;
        }
    }

    /// The items of a sequence.
    pub fn items(&self) -> &[Node] {
        match self {
            Node::Seq(s) => s,
            _ => &[],
        }
    }

    /// Parses one document (an empty text is `None`).
    pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
        let mut b = Builder::default();
        Parser::new_from_str(text)
            .load(&mut b, true)
            .map_err(|e| YamlError::Syntax {
                line: e.marker().line(),
                message: e.info().to_string(),
            })?;
        if let Some(line) = b.alias {
            return Err(YamlError::Alias { line });
        }
        match b.docs.len() {
            0 => Ok(None),
            1 => Ok(b.docs.pop()),
            _ => Err(YamlError::Several),
        }
    }

    /// The node as a block-style YAML document (no `---`), ending in a newline.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Node::Map(m) if !m.is_empty() => write_map(&mut out, m, 0, false),
            Node::Seq(s) if !s.is_empty() => write_seq(&mut out, s, 0, false),
            other => {
                write_inline(&mut out, other, 0);
                out.push('\n');
            }
        }
        out
    }
}

/// Builds [`Node`]s from parser events.
#[derive(Default)]
struct Builder {
    stack: Vec<Node>,
    keys: Vec<Option<Node>>,
    docs: Vec<Node>,
    alias: Option<usize>,
}

impl Builder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Node::Seq(s)) => s.push(node),
            Some(Node::Map(m)) => match self.keys.last_mut().and_then(Option::take) {
                Some(k) => m.push((k, node)),
                None => {
                    if let Some(slot) = self.keys.last_mut() {
                        *slot = Some(node);
                    }
                }
            },
            Some(Node::Scalar(_)) => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, _, tag) => {
                let tag = tag.map(|t| {
                    if t.handle == "tag:yaml.org,2002:" {
                        format!("!!{}", t.suffix)
                    } else {
                        format!("{}{}", t.handle, t.suffix)
                    }
                });
                self.push_value(Node::Scalar(Scalar {
                    text,
                    plain: style == TScalarStyle::Plain,
                    tag,
                }));
            }
            Event::SequenceStart(..) => self.stack.push(Node::Seq(Vec::new())),
            Event::MappingStart(..) => {
                self.stack.push(Node::Map(Vec::new()));
                self.keys.push(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if matches!(ev, Event::MappingEnd) {
                    self.keys.pop();
                }
                if let Some(done) = self.stack.pop() {
                    self.push_value(done);
                }
            }
            Event::Alias(_) => {
                self.alias.get_or_insert(mark.line());
                self.push_value(Node::plain(""));
            }
            _ => {}
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Writes mapping entries at `ind`; with `inline`, the first entry continues the current line
/// (after `- `).
fn write_map(out: &mut String, m: &[(Node, Node)], ind: usize, inline: bool) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, ind);
        }
        write_inline(out, k, ind);
        out.push(':');
        write_value(out, v, ind);
    }
}

fn write_seq(out: &mut String, s: &[Node], ind: usize, inline: bool) {
    for (i, item) in s.iter().enumerate() {
        if i > 0 || !inline {
            indent(out, ind);
        }
        out.push('-');
        match item {
            Node::Map(m) if !m.is_empty() => {
                out.push(' ');
                write_map(out, m, ind + 2, true);
            }
            Node::Seq(s) if !s.is_empty() => {
                out.push(' ');
                write_seq(out, s, ind + 2, true);
            }
            other => {
                if !is_empty_plain(other) {
                    out.push(' ');
                    write_inline(out, other, ind + 2);
                }
                out.push('\n');
            }
        }
    }
}

/// Writes what follows `key:`.
fn write_value(out: &mut String, v: &Node, ind: usize) {
    match v {
        Node::Map(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, ind + 2, false);
        }
        // Sequences under a key at the key's indentation, as `kubectl get -o yaml` writes.
        Node::Seq(s) if !s.is_empty() => {
            out.push('\n');
            write_seq(out, s, ind, false);
        }
        other => {
            if !is_empty_plain(other) {
                out.push(' ');
                write_inline(out, other, ind + 2);
            }
            out.push('\n');
        }
    }
}

fn is_empty_plain(n: &Node) -> bool {
    matches!(n, Node::Scalar(s) if s.plain && s.text.is_empty() && s.tag.is_none())
}

/// Writes a scalar or an empty collection on the current line (a literal block continues on
/// the next lines at `ind`).
fn write_inline(out: &mut String, n: &Node, ind: usize) {
    match n {
        Node::Map(_) => out.push_str("{}"),
        Node::Seq(_) => out.push_str("[]"),
        Node::Scalar(s) => {
            if let Some(t) = &s.tag {
                out.push_str(t);
                out.push(' ');
            }
            if s.plain || plain_safe(&s.text) {
                out.push_str(&s.text);
            } else if literal_safe(&s.text) {
                write_literal(out, &s.text, ind);
            } else {
                write_quoted(out, &s.text);
            }
        }
    }
}

/// Strings that every YAML reader (1.1 and 1.2) reads back as the same string when unquoted:
/// names, paths, images, label values. Anything that could be a number, a bool, a null, a
/// timestamp or YAML syntax is quoted.
fn plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || (first == '/' && s.len() > 1))
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "nan" | "inf"
        )
}

/// A multi-line string that a literal block (`|`) keeps byte for byte.
fn literal_safe(s: &str) -> bool {
    let first = s.lines().find(|l| !l.is_empty());
    s.contains('\n')
        && first.is_some_and(|l| !l.starts_with(' '))
        && !s
            .lines()
            .any(|l| !l.is_empty() && l.trim_start_matches(' ').is_empty())
        && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

fn write_literal(out: &mut String, s: &str, ind: usize) {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    out.push_str(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            indent(out, ind);
            out.push_str(line);
        }
    }
    // The caller ends the line; keep any extra trailing newlines (`|+`).
    for _ in 1..trailing {
        out.push('\n');
    }
}

fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(text: &str) -> String {
        Node::parse(text)
            .expect("parses")
            .expect("a document")
            .to_yaml()
    }

    #[test]
    fn plain_scalars_are_written_as_read() {
        let text = "a: 0644\nb: yes\nc: 1.10\nd: on\ne: 12:30\nf:\ng: ~\nh: true\n";
        assert_eq!(round(text), text);
    }

    #[test]
    fn strings_stay_strings() {
        let out = round("a: '0644'\nb: \"yes\"\nc: 'web-1'\nd: \"it's\"\ne: ''\nf: '8080'\n");
        assert_eq!(
            out,
            "a: \"0644\"\nb: \"yes\"\nc: web-1\nd: \"it's\"\ne: \"\"\nf: \"8080\"\n"
        );
        // And they read back as the same strings.
        let again = Node::parse(&out).expect("parses").expect("doc");
        assert_eq!(again.get("a").and_then(Node::as_str), Some("0644"));
        assert!(matches!(again.get("b"), Some(Node::Scalar(s)) if !s.plain));
    }

    #[test]
    fn block_scalars_round_trip_their_value() {
        let text = "script: |\n  set -e\n    indented\n\n  done\nkeep: |+\n  a\n\nstrip: |-\n  x\nfold: >\n  one\n  two\n";
        let doc = Node::parse(text).expect("ok").expect("doc");
        let again = Node::parse(&doc.to_yaml()).expect("ok").expect("doc");
        assert_eq!(again.to_yaml(), doc.to_yaml());
        for (k, v) in [
            ("script", "set -e\n  indented\n\ndone\n"),
            ("keep", "a\n\n"),
            ("strip", "x"),
            ("fold", "one two\n"),
        ] {
            assert_eq!(again.get(k).and_then(Node::as_str), Some(v), "{k}");
        }
    }

    #[test]
    fn kubernetes_shapes_round_trip() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        args: [\"--port\", \"8080\"]\n        ports:\n        - containerPort: 8080\n          name: http\n      volumes: []\n";
        let doc = Node::parse(text).expect("ok").expect("doc");
        let out = doc.to_yaml();
        assert_eq!(Node::parse(&out).expect("ok").expect("doc"), doc);
        assert!(out.contains("      - name: app\n"), "{out}");
        assert!(out.contains("volumes: []\n"), "{out}");
    }

    #[test]
    fn aliases_are_refused_with_their_line() {
        let e = Node::parse("a: &x 1\nb: *x\n").expect_err("alias");
        assert_eq!(
            e.to_string(),
            "line 2: uses a YAML alias (`*name`); expand it, then inject"
        );
    }
}
