//! Text from outside (host names, command lines, the spec the operator typed) made safe to print
//! on a terminal.

/// `text` with every control character escaped (`\u{1b}`, `\n`), every other line end (U+2028,
/// U+2029), and every character that reorders the text around it (the bidirectional
/// embeddings, overrides and isolates, and the direction marks): host names come from records
/// that any process with access to the store writes, command lines from whatever a process put
/// in its arguments, and a spec from wherever the operator copied it, so any of them could
/// otherwise move the operator's cursor, recolour the terminal, break the table's lines or make
/// a line read backwards.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || ends_line(c) || reorders(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The Unicode line ends that are not control characters: LINE SEPARATOR and PARAGRAPH
/// SEPARATOR (terminals and editors may break the line there).
fn ends_line(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// The Unicode bidirectional formatting characters (UAX #9): marks, embeddings, overrides and
/// isolates.
fn reorders(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `1 lock`, `2 locks`.
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_reorders_or_ends_the_line_is_escaped() {
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(printable("x\u{2067}y\u{200f}"), "x\\u{2067}y\\u{200f}");
        assert_eq!(printable("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
        assert_eq!(printable("caf\u{e9} \u{8a9e}"), "caf\u{e9} \u{8a9e}");
    }
}
