//! `oomsnap help config`: the configuration reference, inside the image.
//!
//! `docs/configuration.md` is compiled in, so the reference an error points
//! to is there in a `scratch` container where the repository is not. It
//! leaves as plain text for a terminal ([`render`]): headings underlined,
//! links and emphasis reduced to their words, code blocks indented, and each
//! table row turned into a block (its first cell, then one `column: value`
//! line per other cell, wrapped) because wide Markdown tables are unreadable
//! in 80 columns. Given a word, only the rows whose first cell holds it are
//! printed ([`rows_matching`]).

/// The reference, as written for the web.
pub const CONFIGURATION_MD: &str = include_str!("../../docs/configuration.md");

/// The width text is wrapped to.
pub const WIDTH: usize = 80;

/// `oomsnap help config [WORD]`.
pub fn config(word: Option<&str>) -> String {
    match word {
        None => render(CONFIGURATION_MD, WIDTH),
        Some(w) => {
            let rows = rows_matching(CONFIGURATION_MD, w, WIDTH);
            if rows.is_empty() {
                format!(
                    "No row of the configuration reference names {w:?}; `oomsnap help config` prints all of it.\n"
                )
            } else {
                rows
            }
        }
    }
}

/// The whole page for a terminal.
pub(crate) fn render(md: &str, width: usize) -> String {
    let mut out = String::new();
    let mut para: Vec<&str> = Vec::new();
    let mut lines = md.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let prose = !trimmed.is_empty()
            && !trimmed.starts_with("```")
            && !trimmed.starts_with('|')
            && heading(line).is_none();
        if prose {
            para.push(line);
            continue;
        }
        out.push_str(&reflow(&para, width));
        para.clear();
        if trimmed.starts_with("```") {
            for code in lines.by_ref() {
                if code.trim_start().starts_with("```") {
                    break;
                }
                out.push_str("    ");
                out.push_str(code);
                out.push('\n');
            }
        } else if let Some(title) = heading(line) {
            let (level, text) = title;
            let text = inline(text);
            out.push_str(&text);
            out.push('\n');
            let under = if level <= 2 { '=' } else { '-' };
            out.push_str(&under.to_string().repeat(text.chars().count()));
            out.push('\n');
        } else if trimmed.starts_with('|') {
            let mut table = vec![line];
            while let Some(next) = lines.peek() {
                if next.trim_start().starts_with('|') {
                    table.push(lines.next().unwrap_or_default());
                } else {
                    break;
                }
            }
            out.push_str(&render_table(&table, width));
        } else {
            out.push('\n');
        }
    }
    out.push_str(&reflow(&para, width));
    out
}

/// A paragraph or a list, re-wrapped once links and marks are gone: each
/// `- ` or `1. ` item starts a line, its text hangs under its first word.
fn reflow(lines: &[&str], width: usize) -> String {
    let mut items: Vec<(String, String)> = Vec::new();
    for line in lines {
        let t = line.trim_start();
        let digits = t.chars().take_while(char::is_ascii_digit).count();
        let marker = if t.starts_with("- ") {
            Some(t[..2].to_string())
        } else if digits > 0 && t[digits..].starts_with(". ") {
            Some(t[..digits + 2].to_string())
        } else {
            None
        };
        match (marker, items.last_mut()) {
            (Some(m), _) => {
                let indent = " ".repeat(line.len() - t.len());
                items.push((format!("{indent}{m}"), t[m.len()..].to_string()));
            }
            (None, Some((_, text))) => {
                text.push(' ');
                text.push_str(t);
            }
            (None, None) => items.push((String::new(), t.to_string())),
        }
    }
    items
        .iter()
        .map(|(marker, text)| wrap(marker, &inline(text), width))
        .collect()
}

/// The table rows whose first cell mentions `word` (any case), rendered.
pub(crate) fn rows_matching(md: &str, word: &str, width: usize) -> String {
    let word = word.to_ascii_lowercase();
    let mut out = String::new();
    let mut header: Option<Vec<String>> = None;
    for line in md.lines() {
        if !line.trim_start().starts_with('|') {
            header = None;
            continue;
        }
        let cells = cells(line);
        if is_separator(&cells) {
            continue;
        }
        match &header {
            None => header = Some(cells),
            Some(h) => {
                let first = inline(cells.first().map(String::as_str).unwrap_or_default());
                if first.to_ascii_lowercase().contains(&word) {
                    out.push_str(&render_row(h, &cells, width));
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if level == 0 {
        return None;
    }
    line[level..].strip_prefix(' ').map(|t| (level, t))
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    // A `|` inside backticks is part of a value, not a column break.
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut code = false;
    for c in inner.chars() {
        match c {
            '`' => {
                code = !code;
                cur.push(c);
            }
            '|' if !code => cells.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    cells.push(cur.trim().to_string());
    cells
}

fn is_separator(cells: &[String]) -> bool {
    cells
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
}

fn render_table(lines: &[&str], width: usize) -> String {
    let mut rows = lines.iter().map(|l| cells(l)).filter(|c| !is_separator(c));
    let Some(header) = rows.next() else {
        return String::new();
    };
    let mut out = String::new();
    for row in rows {
        out.push_str(&render_row(&header, &row, width));
        out.push('\n');
    }
    out
}

/// `| `A` | form | default |` → `A` then `    form: …` lines.
fn render_row(header: &[String], row: &[String], width: usize) -> String {
    let mut out = String::new();
    let mut cells = row.iter();
    if let Some(first) = cells.next() {
        out.push_str("  ");
        out.push_str(&inline(first));
        out.push('\n');
    }
    for (name, value) in header.iter().skip(1).zip(cells) {
        let value = inline(value);
        if value.is_empty() {
            continue;
        }
        let label = format!("      {}: ", inline(name));
        out.push_str(&wrap(&label, &value, width));
    }
    out
}

/// `label` then `text` wrapped at `width`, continuation lines indented
/// under the text.
fn wrap(label: &str, text: &str, width: usize) -> String {
    let indent = " ".repeat(label.chars().count().min(width / 2));
    let mut out = String::from(label);
    let mut col = label.chars().count();
    let mut first = true;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if !first && col + 1 + len > width {
            out.push('\n');
            out.push_str(&indent);
            col = indent.len();
        } else if !first {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += len;
        first = false;
    }
    out.push('\n');
    out
}

/// Markdown inline syntax reduced to its words: `code` loses its backticks,
/// `[text](link)` keeps the text, `**bold**` and `*emphasis*` lose their
/// stars. Text inside backticks is kept as written (`(*cache).put`).
pub(crate) fn inline(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '`' => {
                let end = chars[i + 1..].iter().position(|c| *c == '`');
                match end {
                    Some(e) => {
                        out.extend(&chars[i + 1..i + 1 + e]);
                        i += e + 2;
                    }
                    None => {
                        out.push('`');
                        i += 1;
                    }
                }
            }
            '[' => match link(&chars[i..]) {
                Some((text, used)) => {
                    out.push_str(&inline(&text));
                    i += used;
                }
                None => {
                    out.push('[');
                    i += 1;
                }
            },
            '*' => {
                // Emphasis marks touch a word on their inner side.
                let stars = chars[i..].iter().take_while(|c| **c == '*').count();
                let after = chars.get(i + stars).is_some_and(|c| !c.is_whitespace());
                let before = i > 0 && !chars[i - 1].is_whitespace();
                if after || before {
                    i += stars;
                } else {
                    out.push('*');
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `[text](target)` at the start of `chars`: the text and the length used.
fn link(chars: &[char]) -> Option<(String, usize)> {
    let close = chars.iter().position(|c| *c == ']')?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let end = chars[close + 2..].iter().position(|c| *c == ')')?;
    Some((chars[1..close].iter().collect(), close + 2 + end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_markdown_is_reduced_to_its_words() {
        assert_eq!(
            inline("see [storage](storage.md) and `OOMSNAP_STORE`"),
            "see storage and OOMSNAP_STORE"
        );
        assert_eq!(
            inline("**not** on `medium: Memory`"),
            "not on medium: Memory"
        );
        assert_eq!(inline("*in the pod's namespace*"), "in the pod's namespace");
        assert_eq!(inline("`main.(*cache).put`"), "main.(*cache).put");
        assert_eq!(inline("a * b and [x] alone"), "a * b and [x] alone");
        assert_eq!(inline("unclosed `tick"), "unclosed `tick");
    }

    #[test]
    fn a_table_becomes_one_block_per_row() {
        let md = "\
| variable | form | what it does |
|---|---|---|
| `OOMSNAP_STORE` | URL: `a|b` | Where captures are shipped, a long sentence that has to wrap somewhere before eighty columns. |
";
        let text = render(md, 60);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  OOMSNAP_STORE");
        assert_eq!(lines[1], "      form: URL: a|b");
        assert!(
            lines[2].starts_with("      what it does: Where captures"),
            "{text}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{text}");
        assert!(lines[3].starts_with("                    "), "{text}");
        assert!(!text.contains('`') && !text.contains("|---"), "{text}");
    }

    #[test]
    fn paragraphs_and_lists_are_rewrapped() {
        let md = "Read [Kubernetes](kubernetes.md)\nfirst. Then\ncome back.\n\n- one\n  item\n- two\n1. first\n";
        assert_eq!(
            render(md, 80),
            "Read Kubernetes first. Then come back.\n\n- one item\n- two\n1. first\n"
        );
        let long = "word ".repeat(40);
        let text = render(&format!("- {long}\n"), 30);
        assert!(
            text.lines().skip(1).all(|l| l.starts_with("  word")),
            "{text}"
        );
    }

    #[test]
    fn headings_and_code_read_well_in_a_terminal() {
        let text = render(
            "## When a value is wrong\n\n```text\noomsnap: bad\n```\n",
            80,
        );
        assert!(
            text.starts_with("When a value is wrong\n=====================\n"),
            "{text}"
        );
        assert!(text.contains("\n    oomsnap: bad\n"), "{text}");
        assert!(!text.contains("```"), "{text}");
    }

    #[test]
    fn the_real_reference_renders_and_every_variable_is_in_it() {
        let text = config(None);
        for v in crate::config::KNOWN {
            assert!(
                text.contains(&format!("  {v}\n")),
                "{v} has no block:\n{text}"
            );
        }
        assert!(!text.contains("](") && !text.contains("|---"));
        let over: Vec<&str> = text
            .lines()
            .filter(|l| l.chars().count() > WIDTH && !l.starts_with("    "))
            .filter(|l| l.contains(' '))
            .collect();
        assert!(over.len() < 5, "lines too wide for a terminal: {over:#?}");
    }

    #[test]
    fn one_variable_can_be_looked_up() {
        let text = config(Some("oomsnap_store"));
        assert!(text.starts_with("  OOMSNAP_STORE\n"), "{text}");
        assert!(
            text.contains("default: file:///var/lib/oomsnap/store"),
            "{text}"
        );
        assert!(!text.contains("OOMSNAP_TARGET"), "{text}");
        assert!(config(Some("no-such-thing")).contains("No row"));
    }
}
