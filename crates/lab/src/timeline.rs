//! A run drawn as an SVG timeline (`chaos --timeline`, `demo --timeline`): one row per candidate, a bar
//! per term coloured and labelled by its number, a mark for every injected fault, and the gaps in a
//! child's heartbeats.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use jiff::Timestamp;

/// Width of the drawing area, in SVG user units (pixels).
const WIDTH: f64 = 1200.0;
/// Left margin for the row names.
const LEFT: f64 = 170.0;
const ROW: f64 = 34.0;
const TOP: f64 = 46.0;
/// Height below the rows for the Lease-wide faults' labels and the time axis.
const BOTTOM: f64 = 60.0;

/// A term of one candidate: `[from, to]`.
#[derive(Clone, Debug)]
pub(crate) struct Bar {
    pub(crate) row: usize,
    pub(crate) from: Timestamp,
    pub(crate) to: Timestamp,
    pub(crate) term: i64,
}

/// An injected fault: on one candidate's row, or on the whole Lease (`row: None`); an instant, or a
/// span until `to`.
#[derive(Clone, Debug)]
pub(crate) struct Mark {
    pub(crate) row: Option<usize>,
    pub(crate) from: Timestamp,
    pub(crate) to: Option<Timestamp>,
    pub(crate) label: String,
}

/// A silence in one candidate's heartbeats.
#[derive(Clone, Debug)]
pub(crate) struct Gap {
    pub(crate) row: usize,
    pub(crate) from: Timestamp,
    pub(crate) to: Timestamp,
}

/// What is drawn.
#[derive(Clone, Debug)]
pub(crate) struct Timeline {
    pub(crate) title: String,
    pub(crate) start: Timestamp,
    pub(crate) end: Timestamp,
    pub(crate) rows: Vec<String>,
    pub(crate) bars: Vec<Bar>,
    pub(crate) marks: Vec<Mark>,
    pub(crate) gaps: Vec<Gap>,
}

// === impl Timeline ===

impl Timeline {
    pub(crate) fn new(title: impl Into<String>, start: Timestamp, end: Timestamp) -> Self {
        Self {
            title: title.into(),
            start,
            end,
            rows: Vec::new(),
            bars: Vec::new(),
            marks: Vec::new(),
            gaps: Vec::new(),
        }
    }

    /// The row named `name`, added when new.
    pub(crate) fn row(&mut self, name: &str) -> usize {
        if let Some(i) = self.rows.iter().position(|r| r == name) {
            return i;
        }
        self.rows.push(name.to_owned());
        self.rows.len() - 1
    }

    fn x(&self, at: Timestamp) -> f64 {
        let span = self.end.duration_since(self.start).as_secs_f64().max(1e-3);
        let t = at.duration_since(self.start).as_secs_f64().clamp(0.0, span);
        LEFT + t / span * (WIDTH - LEFT - 10.0)
    }

    fn y(row: usize) -> f64 {
        TOP + ROW * row as f64
    }

    /// The SVG document.
    pub(crate) fn svg(&self) -> String {
        let height = TOP + ROW * self.rows.len() as f64 + BOTTOM;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, "<title>{}</title>", escape(&self.title));
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
            escape(&self.title)
        );
        let axis_y = TOP + ROW * self.rows.len() as f64;
        // Rows and their names.
        for (i, name) in self.rows.iter().enumerate() {
            let y = Self::y(i);
            let fill = if i % 2 == 0 { "#f4f4f4" } else { "#fafafa" };
            let _ = writeln!(
                s,
                r#"<rect class="row" x="{LEFT}" y="{y}" width="{}" height="{ROW}" fill="{fill}"/>"#,
                WIDTH - LEFT - 10.0
            );
            let _ = writeln!(
                s,
                r#"<text class="row-name" x="{}" y="{}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + ROW / 2.0 + 4.0,
                escape(name)
            );
        }
        // Time axis: a tick per second (or per 10 s for long runs).
        let span = self.end.duration_since(self.start).as_secs_f64();
        let step = if span > 60.0 { 10.0 } else { 1.0 };
        let mut t = 0.0;
        while t <= span {
            let x = LEFT + t / span.max(1e-3) * (WIDTH - LEFT - 10.0);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{axis_y}" stroke="#dddddd"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#666666">+{t}s</text>"##,
                axis_y + 14.0
            );
            t += step;
        }
        // Terms.
        for bar in &self.bars {
            let (x1, x2) = (self.x(bar.from), self.x(bar.to));
            let y = Self::y(bar.row) + 7.0;
            let hue = (bar.term.rem_euclid(360) * 67).rem_euclid(360);
            let _ = writeln!(
                s,
                r#"<g class="term"><title>term {} ({:.3}s .. {:.3}s)</title><rect x="{x1:.1}" y="{y}" width="{:.1}" height="{}" rx="2" fill="hsl({hue},65%,55%)"/><text x="{:.1}" y="{}" fill="black">{}</text></g>"#,
                bar.term,
                bar.from.duration_since(self.start).as_secs_f64(),
                bar.to.duration_since(self.start).as_secs_f64(),
                (x2 - x1).max(1.0),
                ROW - 14.0,
                x1 + 2.0,
                y + ROW / 2.0 - 3.0,
                bar.term
            );
        }
        // Heartbeat gaps.
        for gap in &self.gaps {
            let (x1, x2) = (self.x(gap.from), self.x(gap.to));
            let y = Self::y(gap.row) + ROW - 5.0;
            let _ = writeln!(
                s,
                r#"<g class="gap"><title>no heartbeat for {:.3}s</title><line x1="{x1:.1}" y1="{y}" x2="{x2:.1}" y2="{y}" stroke="black" stroke-width="2" stroke-dasharray="3,2"/></g>"#,
                gap.to.duration_since(gap.from).as_secs_f64()
            );
        }
        // Faults.
        for (n, mark) in self.marks.iter().enumerate() {
            let x1 = self.x(mark.from);
            let (y, h) = match mark.row {
                Some(row) => (Self::y(row), ROW),
                None => (TOP, ROW * self.rows.len() as f64),
            };
            let _ = write!(
                s,
                r#"<g class="fault"><title>{} at {:.3}s</title>"#,
                escape(&mark.label),
                mark.from.duration_since(self.start).as_secs_f64()
            );
            if let Some(to) = mark.to {
                let _ = write!(
                    s,
                    r#"<rect x="{x1:.1}" y="{y}" width="{:.1}" height="{h}" fill="red" fill-opacity="0.12"/>"#,
                    (self.x(to) - x1).max(1.0)
                );
            }
            let _ = write!(
                s,
                r#"<line x1="{x1:.1}" y1="{y}" x2="{x1:.1}" y2="{}" stroke="red" stroke-width="1.5"/>"#,
                y + h
            );
            let label_y = match mark.row {
                Some(_) => y + 9.0,
                None => axis_y + 28.0 + 12.0 * (n % 2) as f64,
            };
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{label_y}" fill="red" font-size="9">{}</text></g>"#,
                x1 + 2.0,
                escape(&mark.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes the SVG to `path`.
    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.svg()).with_context(|| format!("writing {}", path.display()))
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_700_000_000_000 + ms).unwrap()
    }

    #[test]
    fn the_svg_is_well_formed_with_a_row_per_candidate_a_bar_per_term_and_a_mark_per_fault() {
        let mut timeline = Timeline::new("seed 7 <&> \"quoted\"", at(0), at(5000));
        let a = timeline.row("candidate-0");
        let b = timeline.row("candidate-1");
        assert_eq!(timeline.row("candidate-0"), a, "rows are found by name");
        timeline.bars = vec![
            Bar {
                row: a,
                from: at(100),
                to: at(2000),
                term: 1,
            },
            Bar {
                row: b,
                from: at(3100),
                to: at(5000),
                term: 2,
            },
        ];
        timeline.marks = vec![
            Mark {
                row: Some(a),
                from: at(1900),
                to: Some(at(2900)),
                label: "black-hole".into(),
            },
            Mark {
                row: None,
                from: at(2500),
                to: None,
                label: "delete-lease".into(),
            },
        ];
        timeline.gaps = vec![Gap {
            row: a,
            from: at(1000),
            to: at(1500),
        }];
        let svg = timeline.svg();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let class = |c: &str| {
            doc.descendants()
                .filter(|n| n.attribute("class") == Some(c))
                .collect::<Vec<_>>()
        };
        assert_eq!(class("row").len(), 2);
        let names: Vec<_> = class("row-name").iter().filter_map(|n| n.text()).collect();
        assert_eq!(names, ["candidate-0", "candidate-1"]);
        let terms = class("term");
        assert_eq!(terms.len(), 2);
        let labels: Vec<_> = terms
            .iter()
            .filter_map(|g| {
                g.children()
                    .find(|n| n.has_tag_name("text"))
                    .and_then(|t| t.text())
            })
            .collect();
        assert_eq!(labels, ["1", "2"], "each bar is labelled with its term");
        let colours: Vec<_> = terms
            .iter()
            .filter_map(|g| {
                g.children()
                    .find(|n| n.has_tag_name("rect"))
                    .and_then(|r| r.attribute("fill"))
            })
            .collect();
        assert_ne!(colours[0], colours[1], "terms are coloured apart");
        let faults = class("fault");
        assert_eq!(faults.len(), 2);
        assert!(
            faults[0].descendants().any(|n| n.has_tag_name("rect")),
            "a span is drawn as a band"
        );
        assert!(
            !faults[1].descendants().any(|n| n.has_tag_name("rect")),
            "an instant as a line"
        );
        assert_eq!(class("gap").len(), 1);
        let title = root
            .children()
            .find(|n| n.has_tag_name("title"))
            .and_then(|t| t.text());
        assert_eq!(title, Some("seed 7 <&> \"quoted\""), "text is escaped");
    }
}
