//! Maps field paths (`limits[0].max_requests`) to the line they sit on in the YAML source, so
//! every validation error can point at a line even though serde's value tree has no positions.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every key and sequence item in a YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    prefix: Vec<String>,
    lines: HashMap<String, usize>,
}

impl Walker {
    fn path(&self) -> String {
        join(&self.prefix)
    }

    /// Called when a value (scalar, map or sequence) starts in the current container.
    fn enter_value(&mut self, line: usize) {
        match self.stack.last() {
            Some(Frame::Seq { index }) => {
                let seg = format!("[{index}]");
                self.prefix.push(seg);
                self.lines.entry(self.path()).or_insert(line);
            }
            Some(Frame::Map { key: Some(k) }) => {
                self.prefix.push(k.clone());
            }
            _ => self.prefix.push(String::new()),
        }
    }

    /// Called when a value has ended: the parent moves on to its next key or item.
    fn leave_value(&mut self) {
        self.prefix.pop();
        match self.stack.last_mut() {
            Some(Frame::Seq { index }) => *index += 1,
            Some(Frame::Map { key }) => *key = None,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map { key: key @ None }) = self.stack.last_mut() {
                    *key = Some(text.clone());
                    let mut p = self.prefix.clone();
                    p.push(text);
                    self.lines.entry(join(&p)).or_insert(line);
                } else {
                    self.enter_value(line);
                    self.leave_value();
                }
            }
            Event::Alias(_) => {
                self.enter_value(line);
                self.leave_value();
            }
            Event::MappingStart(..) => {
                if !self.stack.is_empty() {
                    self.enter_value(line);
                }
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                if !self.stack.is_empty() {
                    self.enter_value(line);
                }
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                if !self.stack.is_empty() {
                    self.leave_value();
                }
            }
            _ => {}
        }
    }
}

fn join(segments: &[String]) -> String {
    let mut out = String::new();
    for seg in segments.iter().filter(|s| !s.is_empty()) {
        if !out.is_empty() && !seg.starts_with('[') {
            out.push('.');
        }
        out.push_str(seg);
    }
    out
}

impl LineIndex {
    /// Indexes `source`; a document that does not parse yields an empty index (the syntax
    /// error itself carries its own position).
    pub fn new(source: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut walker, false).is_err() {
            return Self::default();
        }
        Self {
            lines: walker.lines,
        }
    }

    /// The line of `path`, or of its nearest ancestor that exists in the file.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_sequence_items() {
        let src = "listen: a\nroutes:\n  - name: x\n    match: { path_prefix: /a }\n  - name: y\n    match:\n      methods: [GET, POST]\n";
        let idx = LineIndex::new(src);
        assert_eq!(idx.line_of("listen"), Some(1));
        assert_eq!(idx.line_of("routes"), Some(2));
        assert_eq!(idx.line_of("routes[0]"), Some(3));
        assert_eq!(idx.line_of("routes[0].match.path_prefix"), Some(4));
        assert_eq!(idx.line_of("routes[1].name"), Some(5));
        assert_eq!(idx.line_of("routes[1].match.methods[1]"), Some(7));
        // Unknown leaf falls back to its parent.
        assert_eq!(idx.line_of("routes[1].match.nope"), Some(6));
        assert_eq!(idx.line_of("nothing"), None);
    }
}
