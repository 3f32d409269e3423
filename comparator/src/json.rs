//! Canonical JSON text: object keys sorted, no whitespace, strings in one escaping, and
//! numbers by exact decimal value (never through a double, so `19.99` ≠ `19.990000000000002`
//! and `1e400` = `1E+400`).
//!
//! A number `digits × 10^exponent` (digits without leading or trailing zeros) is written in
//! plain decimal form (`120`, `-0.05`) when that needs at most [`MAX_PADDING_ZEROS`] zeros
//! beyond its digits, and as `d.ddde±n` otherwise (`1e400`, `1.5e-30`); zero is `0`. The form
//! follows from the value alone, so equal values always write equal text.

use std::collections::BTreeMap;

/// Zeros a plain-form number may add to its digits before the exponent form is used.
const MAX_PADDING_ZEROS: u64 = 20;

/// Deepest nesting accepted (as serde_json), so hostile documents cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// The canonical text of the JSON document `text`, or `None` when it is not one JSON value.
#[must_use]
pub fn canonical_json(text: &str) -> Option<String> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut out = String::with_capacity(text.len());
    parser.value(&mut out, 0)?;
    parser.skip_whitespace();
    (parser.at == parser.bytes.len()).then_some(out)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn value(&mut self, out: &mut String, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_whitespace();
        match self.bytes.get(self.at)? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => {
                let text = self.string()?;
                push_string(out, &text);
                Some(())
            }
            b't' => self.literal("true", out),
            b'f' => self.literal("false", out),
            b'n' => self.literal("null", out),
            _ => self.number(out),
        }
    }

    fn literal(&mut self, word: &str, out: &mut String) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word.as_bytes()).then_some(())?;
        self.at = end;
        out.push_str(word);
        Some(())
    }

    fn object(&mut self, out: &mut String, depth: usize) -> Option<()> {
        self.at += 1;
        // Later duplicates win, as in PostgreSQL's jsonb and serde_json.
        let mut members = BTreeMap::new();
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
        } else {
            loop {
                self.skip_whitespace();
                let key = self.string()?;
                self.skip_whitespace();
                (self.bytes.get(self.at) == Some(&b':')).then_some(())?;
                self.at += 1;
                let mut value = String::new();
                self.value(&mut value, depth + 1)?;
                members.insert(key, value);
                self.skip_whitespace();
                match self.bytes.get(self.at)? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        out.push('{');
        for (index, (key, value)) in members.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_string(out, key);
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        Some(())
    }

    fn array(&mut self, out: &mut String, depth: usize) -> Option<()> {
        self.at += 1;
        out.push('[');
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
        } else {
            let mut first = true;
            loop {
                if !first {
                    out.push(',');
                }
                first = false;
                self.value(out, depth + 1)?;
                self.skip_whitespace();
                match self.bytes.get(self.at)? {
                    b',' => self.at += 1,
                    b']' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        out.push(']');
        Some(())
    }

    /// A string literal's value (escapes decoded by serde_json, which also validates them).
    fn string(&mut self) -> Option<String> {
        (self.bytes.get(self.at) == Some(&b'"')).then_some(())?;
        let start = self.at;
        let mut at = start + 1;
        loop {
            match self.bytes.get(at)? {
                b'"' => break,
                b'\\' => at += 2,
                _ => at += 1,
            }
        }
        self.at = at + 1;
        serde_json::from_str(self.text.get(start..self.at)?).ok()
    }

    fn number(&mut self, out: &mut String) -> Option<()> {
        let start = self.at;
        let digits_from = |bytes: &[u8], at: usize| {
            bytes[at..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .count()
        };
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let int_len = digits_from(self.bytes, self.at);
        if int_len == 0 || (int_len > 1 && self.bytes[self.at] == b'0') {
            return None;
        }
        let int_part = &self.text[self.at..self.at + int_len];
        self.at += int_len;
        let mut frac_part = "";
        if self.bytes.get(self.at) == Some(&b'.') {
            let len = digits_from(self.bytes, self.at + 1);
            (len > 0).then_some(())?;
            frac_part = &self.text[self.at + 1..self.at + 1 + len];
            self.at += 1 + len;
        }
        let mut exponent_text = "0";
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            let sign_len = usize::from(matches!(self.bytes.get(self.at + 1), Some(b'+' | b'-')));
            let len = digits_from(self.bytes, self.at + 1 + sign_len);
            (len > 0).then_some(())?;
            exponent_text = &self.text[self.at + 1..self.at + 1 + sign_len + len];
            self.at += 1 + sign_len + len;
        }
        match exact_number(negative, int_part, frac_part, exponent_text) {
            Some(canonical) => out.push_str(&canonical),
            // An exponent beyond i64: kept as written, equal only to the same text.
            None => out.push_str(&self.text[start..self.at]),
        }
        Some(())
    }
}

fn push_string(out: &mut String, text: &str) {
    out.push_str(&serde_json::Value::String(text.to_owned()).to_string());
}

/// The canonical text of `-?int.frac e exponent`; `None` when the exponent is out of range.
fn exact_number(negative: bool, int_part: &str, frac_part: &str, exponent: &str) -> Option<String> {
    let all: String = [int_part, frac_part].concat();
    let leading = all.bytes().take_while(|&byte| byte == b'0').count();
    let digits = all[leading..].trim_end_matches('0');
    if digits.is_empty() {
        return Some("0".to_owned());
    }
    let trailing = all.len() - leading - digits.len();
    // value = digits × 10^scale
    let scale = exponent
        .parse::<i64>()
        .ok()?
        .checked_sub(i64::try_from(frac_part.len()).ok()?)?
        .checked_add(i64::try_from(trailing).ok()?)?;
    let len = i64::try_from(digits.len()).ok()?;
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    // Zeros the plain form would add: after the digits, or between the point and them.
    let padding = if scale >= 0 {
        scale.unsigned_abs()
    } else {
        (-scale - len).max(0).unsigned_abs()
    };
    if padding > MAX_PADDING_ZEROS {
        // d.ddd × 10^(scale + len - 1)
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push_str(&scale.checked_add(len - 1)?.to_string());
    } else if scale >= 0 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', usize::try_from(scale).ok()?));
    } else {
        let point = len + scale;
        if point > 0 {
            let point = usize::try_from(point).ok()?;
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', usize::try_from(-point).ok()?));
            out.push_str(digits);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::canonical_json;

    fn canon(text: &str) -> String {
        canonical_json(text).unwrap_or_else(|| panic!("{text} is JSON"))
    }

    #[test]
    fn numbers_are_compared_by_exact_value() {
        for (a, b) in [
            ("1", "1.0"),
            ("1e400", "1E+400"),
            ("1e400", "10e399"),
            ("0.5", "5e-1"),
            ("-0", "0"),
            ("0.000", "0e10"),
            ("120", "1.2e2"),
            ("1.5e-30", "0.0000000000000000000000000000015"),
        ] {
            assert_eq!(canon(a), canon(b), "{a} = {b}");
        }
        for (a, b) in [
            ("12345678901234567890123", "12345678901234567890124"),
            ("1234567890.123456789", "1234567890.123456788"),
            ("19.99", "19.990000000000002"),
            ("1e400", "1e401"),
            ("-1", "1"),
        ] {
            assert_ne!(canon(a), canon(b), "{a} ≠ {b}");
        }
    }

    #[test]
    fn numbers_have_one_written_form() {
        for (text, form) in [
            ("1.50", "1.5"),
            ("-0.050", "-0.05"),
            ("1.2e2", "120"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e21"),
            ("1e400", "1e400"),
            ("123.456e-50", "1.23456e-48"),
            ("0.001", "0.001"),
            ("1e99999999999999999999", "1e99999999999999999999"),
        ] {
            assert_eq!(canon(text), form, "{text}");
        }
    }

    #[test]
    fn documents_sort_keys_and_drop_whitespace() {
        assert_eq!(
            canon(r#" {"b": [1.0, "\u00e9", true, null], "a": {"y": 2, "x": 1}, "a": 3} "#),
            r#"{"a":3,"b":[1,"é",true,null]}"#
        );
        assert_eq!(canon("[]"), "[]");
        assert_eq!(canon("{}"), "{}");
        for bad in [
            "", "[1,]", "{\"a\"}", "01", "1.", "-", "tru", "[1] x", "\"\\x\"",
        ] {
            assert_eq!(canonical_json(bad), None, "{bad}");
        }
        assert_eq!(canonical_json(&"[".repeat(200)), None, "too deep");
    }
}
