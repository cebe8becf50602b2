//! Log text to HTML: escaped, ANSI colours (SGR) as spans, one anchor per
//! line. Other escape sequences are dropped.

/// Renders `text` (lines numbered from `first_line`) as HTML.
pub fn to_html(text: &str, first_line: u64) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut style = Style::default();
    let mut line = first_line;
    let mut open = false;
    let start_line = |out: &mut String, line: u64, style: &Style, open: &mut bool| {
        out.push_str(&format!(
            "<span class=\"ln\" id=\"L{line}\"><a href=\"#L{line}\" data-n=\"{line}\" aria-hidden=\"true\"></a>"
        ));
        if let Some(c) = style.class() {
            out.push_str(&format!("<span class=\"{c}\">"));
            *open = true;
        }
    };
    start_line(&mut out, line, &style, &mut open);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    let mut params = String::new();
                    let mut end = None;
                    for d in chars.by_ref() {
                        if d.is_ascii_digit() || d == ';' {
                            params.push(d);
                        } else {
                            end = Some(d);
                            break;
                        }
                    }
                    if end == Some('m') {
                        if open {
                            out.push_str("</span>");
                            open = false;
                        }
                        style.apply(&params);
                        if let Some(c) = style.class() {
                            out.push_str(&format!("<span class=\"{c}\">"));
                            open = true;
                        }
                    }
                }
            }
            '\n' => {
                if open {
                    out.push_str("</span>");
                    open = false;
                }
                out.push_str("</span>\n");
                line += 1;
                if chars.peek().is_some() {
                    start_line(&mut out, line, &style, &mut open);
                } else {
                    return out;
                }
            }
            '\r' => {}
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    if open {
        out.push_str("</span>");
    }
    out.push_str("</span>");
    out
}

#[derive(Default, Clone)]
struct Style {
    fg: Option<u8>,
    bold: bool,
}

impl Style {
    fn apply(&mut self, params: &str) {
        let params = if params.is_empty() { "0" } else { params };
        for p in params.split(';') {
            match p.parse::<u16>().unwrap_or(0) {
                0 => *self = Style::default(),
                1 => self.bold = true,
                22 => self.bold = false,
                n @ 30..=37 => self.fg = Some((n - 30) as u8),
                n @ 90..=97 => self.fg = Some((n - 90 + 8) as u8),
                39 => self.fg = None,
                _ => {}
            }
        }
    }

    fn class(&self) -> Option<String> {
        match (self.fg, self.bold) {
            (None, false) => None,
            (Some(c), false) => Some(format!("c{c}")),
            (None, true) => Some("b".into()),
            (Some(c), true) => Some(format!("c{c} b")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_escapes_and_anchors() {
        let html = to_html("\x1b[31mred <b>\x1b[0m ok\nsecond & \"q\"\n", 1);
        assert_eq!(
            html,
            "<span class=\"ln\" id=\"L1\"><a href=\"#L1\" data-n=\"1\" aria-hidden=\"true\"></a><span class=\"c1\">red &lt;b&gt;</span> ok</span>\n\
             <span class=\"ln\" id=\"L2\"><a href=\"#L2\" data-n=\"2\" aria-hidden=\"true\"></a>second &amp; &quot;q&quot;</span>\n"
        );
    }

    #[test]
    fn script_tags_are_text() {
        let html = to_html("<script>alert(1)</script>", 7);
        assert!(!html.contains("<script"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("id=\"L7\""));
    }
}
