//! Accessibility checks with axe-core (vendored: `axe.min.js`, MPL-2.0, see
//! `axe-core-LICENSE`), injected through WebDriver script execution, which the console's
//! Content-Security-Policy does not govern.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::support::Browser;

const AXE: &str = include_str!("axe.min.js");

/// One page's axe result.
#[derive(Debug)]
struct PageResult {
    page: String,
    /// Violated rules by impact.
    by_impact: BTreeMap<String, Vec<String>>,
    /// `rule: first offending elements` of serious and critical violations.
    blocking: Vec<String>,
}

/// The results of every page checked in a flow.
#[derive(Debug, Default)]
pub(crate) struct Audit {
    pages: Vec<PageResult>,
}

impl Audit {
    /// Runs axe on the page the browser shows now.
    pub(crate) async fn check(&mut self, browser: &Browser, page: &str) {
        let loaded = browser
            .script(&format!(
                "{AXE}\n;return typeof window.axe === 'object' || typeof axe === 'object';"
            ))
            .await;
        assert_eq!(loaded, Value::Bool(true), "axe-core loads on {page}");
        let result = browser
            .client
            .execute_async(
                r#"const done = arguments[arguments.length - 1];
                const a = window.axe || axe;
                a.run(document).then(
                  r => done({
                    passes: r.passes.length,
                    violations: r.violations.map(v => ({
                      id: v.id,
                      impact: v.impact || "unknown",
                      nodes: v.nodes.slice(0, 3).map(n => n.target.join(" ")),
                    })),
                  }),
                  e => done({ error: String(e) }),
                );"#,
                Vec::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("axe.run on {page}: {e}"));
        let violations = result["violations"]
            .as_array()
            .unwrap_or_else(|| panic!("axe.run on {page} failed: {result}"));
        // A run that checked nothing would also find nothing.
        assert!(
            result["passes"].as_u64().is_some_and(|n| n > 10),
            "axe.run on {page} checked (almost) no rules: {result}"
        );
        let mut by_impact: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut blocking = Vec::new();
        for v in violations {
            let id = v["id"].as_str().unwrap_or("?").to_owned();
            let impact = v["impact"].as_str().unwrap_or("unknown").to_owned();
            if impact == "serious" || impact == "critical" {
                blocking.push(format!("{id} ({impact}) at {}", v["nodes"]));
            }
            by_impact.entry(impact).or_default().push(id);
        }
        self.pages.push(PageResult {
            page: page.to_owned(),
            by_impact,
            blocking,
        });
    }

    /// Prints the summary (seen with `--nocapture`) and fails on any serious or critical
    /// violation.
    pub(crate) fn finish(self) {
        let mut summary = String::from("axe-core summary (violated rules per impact):\n");
        for p in &self.pages {
            let counts: Vec<String> = if p.by_impact.is_empty() {
                vec!["no violations".to_owned()]
            } else {
                p.by_impact
                    .iter()
                    .map(|(impact, ids)| format!("{impact} {} [{}]", ids.len(), ids.join(", ")))
                    .collect()
            };
            let _ = writeln!(summary, "  {:<28} {}", p.page, counts.join("; "));
        }
        #[allow(clippy::print_stderr)]
        {
            eprint!("{summary}");
        }
        let blocking: Vec<String> = self
            .pages
            .iter()
            .flat_map(|p| p.blocking.iter().map(move |b| format!("{}: {b}", p.page)))
            .collect();
        assert!(
            blocking.is_empty(),
            "serious or critical accessibility violations:\n{}",
            blocking.join("\n")
        );
    }
}
