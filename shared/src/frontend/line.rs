//! One instruction's logical line: its text with continuations joined, and the map from each
//! byte back to the Dockerfile's line and column. Made by `parser`, read by `instructions`.

use super::ast::Heredoc;
use super::error::{ErrorKind, FrontendError, Pos};

/// One instruction's text after joining continuation lines, with a map back to the source.
#[derive(Clone, Debug)]
pub struct LogicalLine {
    pub text: String,
    /// (byte offset in `text`, source line, source column of that byte), ascending.
    pub(crate) segments: Vec<(usize, u32, u32)>,
    pub end_line: u32,
    pub heredocs: Vec<Heredoc>,
}

impl LogicalLine {
    /// A line that is not from a file (an ONBUILD trigger of a base image, a test).
    pub fn synthetic(text: &str, pos: Pos) -> LogicalLine {
        LogicalLine { text: text.to_string(), segments: vec![(0, pos.line, pos.col)], end_line: pos.line, heredocs: vec![] }
    }

    /// The source position of byte `offset` of `text`.
    pub fn pos_at(&self, offset: usize) -> Pos {
        let idx = self.segments.partition_point(|s| s.0 <= offset).saturating_sub(1);
        let (start, line, col) = self.segments.get(idx).copied().unwrap_or((0, 1, 1));
        let start = start.min(offset).min(self.text.len());
        let end = offset.min(self.text.len());
        let chars = self.text.get(start..end).map_or(0, |s| s.chars().count()) as u32;
        Pos::new(line, col + chars)
    }

    /// The part of the line from byte `offset` on, keeping positions (an ONBUILD trigger).
    pub fn slice(&self, offset: usize) -> LogicalLine {
        let offset = offset.min(self.text.len());
        let first = self.pos_at(offset);
        let mut segments = vec![(0, first.line, first.col)];
        segments.extend(self.segments.iter().filter(|s| s.0 > offset).map(|&(o, l, c)| (o - offset, l, c)));
        LogicalLine { text: self.text[offset..].to_string(), segments, end_line: self.end_line, heredocs: vec![] }
    }

    pub fn start(&self) -> Pos {
        self.pos_at(0)
    }

    pub fn error(&self, offset: usize, kind: ErrorKind) -> FrontendError {
        FrontendError::at(self.pos_at(offset), kind)
    }
}
