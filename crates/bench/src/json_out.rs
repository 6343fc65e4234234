//! `--json [PATH]`: the results as one JSON line on stdout (beside the
//! table), or as a file for scripts such as `scripts/plot-scaling.py`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Prints `value` as one line on stdout, or writes it (indented) to `path`.
pub fn emit(path: Option<&Path>, value: &Value) -> Result<()> {
    match path {
        None => println!("{value}"),
        Some(path) => {
            let text = serde_json::to_string_pretty(value).context("cannot encode the results as JSON")?;
            std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote the results to {}", path.display());
        }
    }
    Ok(())
}
