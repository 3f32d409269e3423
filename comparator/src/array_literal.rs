//! PostgreSQL array literals (`{1,NULL,"a\"b"}`, `{{1,2},{3,4}}`) from the canonical JSON
//! form the comparator reads an array in (a PostgreSQL array's `to_jsonb`, or a MySQL/MariaDB
//! JSON array), so that a value read on one side can be written to an array column.

/// The array literal of the canonical JSON array `json`; `None` when `json` is not an array.
/// Elements are quoted (so any element type reads them from their text), nested arrays become
/// further dimensions, JSON `null` becomes `NULL`; strings are written unescaped, unless
/// `json_elements` (a `json[]`/`jsonb[]` column), where every element is written as its JSON
/// text.
#[must_use]
pub fn array_literal(json: &str, json_elements: bool) -> Option<String> {
    let mut scanner = Scanner {
        text: json,
        at: 0,
        json_elements,
    };
    let mut out = String::with_capacity(json.len() + 2);
    scanner.array(&mut out)?;
    (scanner.at == json.len()).then_some(out)
}

/// Walks canonical JSON text (no whitespace between tokens).
struct Scanner<'a> {
    text: &'a str,
    at: usize,
    json_elements: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// A JSON array at `at`, written as `{…}`.
    fn array(&mut self, out: &mut String) -> Option<()> {
        (self.peek()? == b'[').then_some(())?;
        self.at += 1;
        out.push('{');
        if self.peek()? == b']' {
            self.at += 1;
            out.push('}');
            return Some(());
        }
        loop {
            self.element(out)?;
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    out.push(',');
                }
                b']' => {
                    self.at += 1;
                    out.push('}');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn element(&mut self, out: &mut String) -> Option<()> {
        let start = self.at;
        match self.peek()? {
            b'[' if !self.json_elements => return self.array(out),
            b'n' if self.text[start..].starts_with("null") => {
                self.at += 4;
                out.push_str("NULL");
                return Some(());
            }
            b'"' if !self.json_elements => {
                self.skip_string()?;
                let text: String = serde_json::from_str(&self.text[start..self.at]).ok()?;
                quote(&text, out);
                return Some(());
            }
            _ => self.skip_value()?,
        }
        quote(&self.text[start..self.at], out);
        Some(())
    }

    /// Past one JSON value of any kind.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'[' | b'{' => {
                let mut depth = 0_usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while !matches!(self.peek(), Some(b',' | b']' | b'}') | None) {
                    self.at += 1;
                }
                Some(())
            }
        }
    }

    /// Past a JSON string starting at `at`.
    fn skip_string(&mut self) -> Option<()> {
        let bytes = self.text.as_bytes();
        self.at += 1;
        loop {
            match bytes.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                _ => self.at += 1,
            }
        }
    }
}

/// `text` as a double-quoted array element.
fn quote(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::array_literal;
    use crate::json::canonical_json;

    fn literal(json: &str, json_elements: bool) -> Option<String> {
        array_literal(&canonical_json(json)?, json_elements)
    }

    #[test]
    fn writes_every_kind_of_element() {
        assert_eq!(literal("[]", false).as_deref(), Some("{}"));
        assert_eq!(
            literal("[1, null, 2.50]", false).as_deref(),
            Some(r#"{"1",NULL,"2.5"}"#)
        );
        assert_eq!(
            literal(r#"["a\"b", "c\\d", "{x,y}", "", "é\n"]"#, false).as_deref(),
            Some("{\"a\\\"b\",\"c\\\\d\",\"{x,y}\",\"\",\"é\n\"}")
        );
        assert_eq!(
            literal("[[1, 2], [3, null]]", false).as_deref(),
            Some(r#"{{"1","2"},{"3",NULL}}"#)
        );
        assert_eq!(
            literal("[true, false]", false).as_deref(),
            Some(r#"{"true","false"}"#)
        );
    }

    #[test]
    fn writes_json_elements_as_their_text() {
        assert_eq!(
            literal(r#"[{"b": [1, "x"], "a": "q\"r"}, "s", [2], null]"#, true).as_deref(),
            Some(r#"{"{\"a\":\"q\\\"r\",\"b\":[1,\"x\"]}","\"s\"","[2]",NULL}"#)
        );
    }

    #[test]
    fn refuses_what_is_not_an_array() {
        assert_eq!(literal(r#"{"a": 1}"#, false), None);
        assert_eq!(literal("3", false), None);
        assert_eq!(literal(r#""[1]""#, false), None);
    }
}
