//! Plain-text tables with a header row, columns as wide as their widest cell (names are not
//! cut, numbers line up), two spaces between columns and no trailing blanks.

/// Which side of its column a cell keeps to.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Align {
    Left,
    /// Numbers.
    Right,
}

/// A table being filled row by row.
pub(crate) struct Table {
    head: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(head: &[(&'static str, Align)]) -> Self {
        Self {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra ones are dropped.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The header row, then every row, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_string();
        let heads: Vec<String> = self.head.iter().map(|(h, _)| (*h).to_string()).collect();
        let widths: Vec<usize> = (0..self.head.len())
            .map(|i| {
                std::iter::once(&heads)
                    .chain(&self.rows)
                    .map(|r| cell(r, i).chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&heads).chain(&self.rows) {
            let mut line = String::new();
            for (i, ((_, align), width)) in self.head.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let c = cell(row, i);
                let pad = " ".repeat(width.saturating_sub(c.chars().count()));
                if *align == Align::Right {
                    line.push_str(&pad);
                    line.push_str(&c);
                } else {
                    line.push_str(&c);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_then_rows_aligned_to_the_widest_cell() {
        let mut t = Table::new(&[("name", Align::Left), ("count", Align::Right)]);
        t.row(vec!["a_long_name".into(), "7".into()]);
        t.row(vec!["b".into(), "1234567".into()]);
        assert_eq!(
            t.render(),
            "name           count\na_long_name        7\nb            1234567\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(&[("key", Align::Left), ("value", Align::Left)]);
        assert_eq!(t.render(), "key  value\n");
    }
}
