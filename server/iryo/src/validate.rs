//! `iryo validate [--profile URL]… [--format text|json] FILE|DIR…`: profile validation of
//! JSON resources and Bundles (JP Core, JP-CLINS, eCheckupReport, base R4).
//! Exit code: 0 no errors, 1 errors found, 2 unreadable input (or nothing to validate).

use iryo_validator::{Outcome, Severity, Validator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Profile (canonical URL, optionally |version) to validate against; repeatable.
    /// Default: each resource's meta.profile.
    #[arg(long)]
    profile: Vec<String>,
    /// Output: `text` (Japanese with English) or `json` (one OperationOutcome per file).
    #[arg(long, default_value = "text")]
    format: String,
    /// JSON files (a resource or a Bundle) or directories (walked for *.json).
    files: Vec<PathBuf>,
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() || e.extension().is_some_and(|x| x == "json") {
                walk(&e, out)?;
            }
        }
        Ok(())
    } else {
        std::fs::metadata(p)?;
        out.push(p.to_path_buf());
        Ok(())
    }
}

fn print_text(path: &Path, out: &Outcome) {
    let errors = out.errors().count();
    let warnings = out
        .issues
        .iter()
        .filter(|i| i.severity == Severity::Warning)
        .count();
    println!(
        "{}: エラー {errors} 件, 警告 {warnings} 件 / {errors} error(s), {warnings} warning(s)",
        path.display()
    );
    for i in &out.issues {
        let sev = match i.severity {
            Severity::Fatal => "致命的/fatal",
            Severity::Error => "エラー/error",
            Severity::Warning => "警告/warning",
            Severity::Information => "情報/information",
        };
        println!("  [{sev}] {}", i.expression);
        println!("    {}", i.message_ja);
        println!("    {}", i.message_en);
    }
}

/// Runs the subcommand; returns the process exit code.
pub fn run(args: ValidateArgs) -> i32 {
    if args.format != "text" && args.format != "json" {
        eprintln!(
            "--format は text または json です / --format must be text or json (got '{}')",
            args.format
        );
        return 2;
    }
    if args.files.is_empty() {
        eprintln!("検証するファイルを指定してください / give the files to validate");
        return 2;
    }
    let mut files = Vec::new();
    let mut unreadable = false;
    for f in &args.files {
        if let Err(e) = walk(f, &mut files) {
            eprintln!("{}: 読めません / cannot read: {e}", f.display());
            unreadable = true;
        }
    }
    let validator = Validator::new();
    let profiles: Vec<&str> = args.profile.iter().map(String::as_str).collect();
    let mut any_error = false;
    let mut json_out = Vec::new();
    for f in &files {
        let parsed = std::fs::read(f)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()));
        let resource = match parsed {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "{}: JSON として読めません / unreadable JSON: {e}",
                    f.display()
                );
                unreadable = true;
                continue;
            }
        };
        let out = validator.validate(&resource, &profiles);
        any_error |= out.has_errors();
        if args.format == "json" {
            json_out.push(json!({
                "file": f.display().to_string(),
                "outcome": out.to_operation_outcome(false),
            }));
        } else {
            print_text(f, &out);
        }
    }
    if args.format == "json" {
        let v = if json_out.len() == 1 && args.files.len() == 1 && args.files[0].is_file() {
            json_out.remove(0)["outcome"].take()
        } else {
            Value::Array(json_out)
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
    }
    if unreadable {
        2
    } else if any_error {
        1
    } else {
        0
    }
}
