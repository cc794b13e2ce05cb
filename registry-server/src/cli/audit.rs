//! `blocks audit`: the audit log.

use registry_client::AuditFilter;

use super::client;
use super::output::{Format, cell, print};

/// `blocks audit`.
pub async fn audit(limit: u32, action: Option<&str>, format: Format) -> anyhow::Result<()> {
    let page = client()?
        .audit(&AuditFilter {
            limit: Some(limit),
            action: action.map(ToOwned::to_owned),
            ..AuditFilter::default()
        })
        .await?;
    let rows: Vec<Vec<String>> = page
        .records
        .iter()
        .map(|r| {
            vec![
                cell(&r.at),
                cell(&r.token_id),
                r.action.clone(),
                r.target.clone(),
                r.outcome.clone(),
            ]
        })
        .collect();
    print(
        format,
        &page,
        &["AT", "TOKEN", "ACTION", "TARGET", "OUTCOME"],
        &rows,
    );
    Ok(())
}
