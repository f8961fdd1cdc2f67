//! Reading the metadata Ultralytics writes into its ONNX exports.
//!
//! The values are Python literals written with `str()`, not JSON: `names` is
//! `{0: 'person', 1: 'bicycle'}`, `imgsz` is `[640, 640]`. Labels can contain
//! quotes (`"driver's seat"`), commas and colons, so they get a small parser
//! rather than string splitting.

/// Parses Ultralytics' `names` value (a dict of int -> str, or a list of str)
/// into labels ordered by class id. Returns a description of the problem when
/// the text is not such a literal.
pub fn parse_python_names(text: &str) -> Result<Vec<String>, String> {
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    p.ws();
    let out = match p.peek() {
        Some(b'{') => {
            p.i += 1;
            let mut pairs: Vec<(usize, String)> = Vec::new();
            loop {
                p.ws();
                if p.eat(b'}') {
                    break;
                }
                let k = p.int()?;
                p.ws();
                if !p.eat(b':') {
                    return Err(p.err("expected `:`"));
                }
                p.ws();
                let v = p.string()?;
                pairs.push((k, v));
                p.ws();
                if !p.eat(b',') {
                    p.ws();
                    if !p.eat(b'}') {
                        return Err(p.err("expected `,` or `}`"));
                    }
                    break;
                }
            }
            pairs.sort_by_key(|(k, _)| *k);
            for (i, (k, _)) in pairs.iter().enumerate() {
                if *k != i {
                    return Err(format!("class ids must run 0..n without gaps; id {i} is missing"));
                }
            }
            pairs.into_iter().map(|(_, v)| v).collect()
        }
        Some(b'[') => {
            p.i += 1;
            let mut v = Vec::new();
            loop {
                p.ws();
                if p.eat(b']') {
                    break;
                }
                v.push(p.string()?);
                p.ws();
                if !p.eat(b',') {
                    p.ws();
                    if !p.eat(b']') {
                        return Err(p.err("expected `,` or `]`"));
                    }
                    break;
                }
            }
            v
        }
        _ => return Err(p.err("expected a dict `{0: 'name', ...}` or a list `['name', ...]`")),
    };
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text after the literal"));
    }
    Ok(out)
}

/// Parses `[640, 640]`, `(640, 480)` or `640` into (height, width).
pub(crate) fn parse_imgsz(text: &str) -> Option<(u32, u32)> {
    let nums: Vec<u32> = text
        .trim_matches(|c: char| c == '[' || c == ']' || c == '(' || c == ')' || c.is_whitespace())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()?;
    match nums.as_slice() {
        [s] => Some((*s, *s)),
        [h, w] => Some((*h, *w)),
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn err(&self, what: &str) -> String {
        format!("{what} at character {}", self.i + 1)
    }
    fn int(&mut self) -> Result<usize, String> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| self.err("expected a class id"))
    }
    fn string(&mut self) -> Result<String, String> {
        let Some(q @ (b'\'' | b'"')) = self.peek() else {
            return Err(self.err("expected a quoted label"));
        };
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated label")),
                Some(c) if c == q => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                    self.i += 1;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("label is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ultralytics_names() {
        assert_eq!(parse_python_names("{0: 'person', 1: 'car'}"), Ok(vec!["person".into(), "car".into()]));
        assert_eq!(
            parse_python_names("{1: \"driver's seat\", 0: 'a, b: c'}"),
            Ok(vec!["a, b: c".into(), "driver's seat".into()])
        );
        assert_eq!(parse_python_names("{0: 'it\\'s'}"), Ok(vec!["it's".into()]));
        assert_eq!(parse_python_names("['ok', 'ng']"), Ok(vec!["ok".into(), "ng".into()]));
        assert_eq!(parse_python_names("{}"), Ok(vec![]));
    }

    #[test]
    fn explains_bad_names() {
        assert!(parse_python_names("{0: person}").unwrap_err().contains("quoted label"));
        assert!(parse_python_names("{0: 'a', 2: 'b'}").unwrap_err().contains("id 1 is missing"));
        assert!(parse_python_names("{0: 'a'").is_err());
        assert!(parse_python_names("person").is_err());
    }

    #[test]
    fn parses_imgsz() {
        assert_eq!(parse_imgsz("[640, 640]"), Some((640, 640)));
        assert_eq!(parse_imgsz("[384, 640]"), Some((384, 640)));
        assert_eq!(parse_imgsz("320"), Some((320, 320)));
        assert_eq!(parse_imgsz("[a]"), None);
    }
}
