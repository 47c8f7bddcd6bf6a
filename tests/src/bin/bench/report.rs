//! The one table the benchmark prints, in markdown ready to paste into README.

/// One line of the table.
pub struct Row {
    pub section: String,
    pub scenario: String,
    pub figure: String,
    pub detail: String,
}

impl Row {
    pub fn new(
        section: &str,
        scenario: impl Into<String>,
        figure: impl Into<String>,
        detail: &str,
    ) -> Row {
        Row {
            section: section.to_owned(),
            scenario: scenario.into(),
            figure: figure.into(),
            detail: detail.to_owned(),
        }
    }
}

/// The table, then the notes under it.
pub fn render(rows: &[Row], notes: &[String]) -> String {
    let mut out = String::from("| section | scenario | result | details |\n|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cell(&r.section),
            cell(&r.scenario),
            cell(&r.figure),
            cell(&r.detail)
        ));
    }
    out.push('\n');
    for note in notes {
        out.push_str(note);
        out.push('\n');
    }
    out
}

/// A table cell: no pipes or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}
