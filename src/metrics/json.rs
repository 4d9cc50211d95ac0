//! A small JSON writer for the statistics document: objects, keys, numbers, strings, written in
//! one pass into a `String` (no intermediate tree).

use std::fmt::Write;

/// Writes JSON into a string. Callers open and close objects in a balanced way; keys and values
/// alternate inside objects. Numbers are integers.
pub(crate) struct JsonWriter {
    out: String,
    /// Per open object: whether it already holds a member (a comma goes before the next).
    filled: Vec<bool>,
    /// A key was just written: the next value follows it without a comma.
    after_key: bool,
}

impl JsonWriter {
    pub(crate) fn new() -> Self {
        JsonWriter {
            out: String::with_capacity(1024),
            filled: Vec::new(),
            after_key: false,
        }
    }

    fn before_value(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(f) = self.filled.last_mut() {
            if *f {
                self.out.push(',');
            }
            *f = true;
        }
    }

    pub(crate) fn begin_object(&mut self) -> &mut Self {
        self.before_value();
        self.out.push('{');
        self.filled.push(false);
        self
    }

    pub(crate) fn end_object(&mut self) -> &mut Self {
        self.filled.pop();
        self.out.push('}');
        self
    }

    pub(crate) fn key(&mut self, k: &str) -> &mut Self {
        self.before_value();
        self.string_raw(k);
        self.out.push(':');
        self.after_key = true;
        self
    }

    fn string_raw(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    pub(crate) fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k);
        self.before_value();
        self.string_raw(v);
        self
    }

    pub(crate) fn int(&mut self, k: &str, v: i64) -> &mut Self {
        self.key(k);
        self.before_value();
        let _ = write!(self.out, "{v}");
        self
    }

    pub(crate) fn uint(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k);
        self.before_value();
        let _ = write!(self.out, "{v}");
        self
    }

    pub(crate) fn object(&mut self, k: &str) -> &mut Self {
        self.key(k);
        self.begin_object()
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_objects_with_escapes() {
        let mut w = JsonWriter::new();
        w.begin_object()
            .str("name", "a\"b\\c\n\u{1}")
            .int("i", -3)
            .object("o")
            .uint("u", 7)
            .end_object()
            .object("empty")
            .end_object()
            .end_object();
        assert_eq!(
            w.finish(),
            r#"{"name":"a\"b\\c\n\u0001","i":-3,"o":{"u":7},"empty":{}}"#
        );
    }
}
