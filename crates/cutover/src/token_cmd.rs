//! `cutover token create|list|delete`: named admin tokens, on the tokens file of a config, without
//! a running router (which picks changes up by itself).

use std::io::Write;
use std::path::Path;

use cutover_control::api::token::{self, file, Role};
use serde_json::json;

use crate::cli::TokenSub;
use crate::client::Failure;
use crate::output;

pub fn run(cmd: TokenSub) -> Result<(), Failure> {
    match cmd {
        TokenSub::Create { name, role, config } => create(&config, &name, &role),
        TokenSub::List { config, json } => list(&config, json),
        TokenSub::Delete { name, config } => delete(&config, &name),
    }
}

fn delete(config: &Path, name: &str) -> Result<(), Failure> {
    let admin = admin_config(config)?;
    let gone = file::delete(&admin.tokens_file, name).map_err(|e| match e {
        file::CreateError::Invalid(e) => Failure::new(2, e.to_string()),
        file::CreateError::Io(m) => Failure::new(1, m),
    })?;
    output::line(&format!(
        "deleted token {name:?} (role {}) from {}: a running router refuses it from its next use on",
        gone.role,
        admin.tokens_file.display()
    ))
}

fn admin_config(config: &Path) -> Result<cutover_config::AdminConfig, Failure> {
    cutover_config::load(config)
        .map(|c| c.admin)
        .map_err(|e| Failure::new(2, e.to_string()))
}

fn create(config: &Path, name: &str, role: &str) -> Result<(), Failure> {
    let role = Role::parse(role).ok_or_else(|| Failure::new(2, format!("unknown role {role:?}")))?;
    let admin = admin_config(config)?;
    let made = file::create(&admin.tokens_file, name, role).map_err(|e| match e {
        file::CreateError::Invalid(e) => Failure::new(2, e.to_string()),
        file::CreateError::Io(m) => Failure::new(1, m),
    })?;
    output::line(&made.token)?;
    // On stderr, so `TOKEN=$(cutover token create ...)` captures only the token.
    let _ = writeln!(
        std::io::stderr(),
        "created token {name:?} (role {role}) in {}: this is the only time it is shown; only its SHA-256 is stored",
        admin.tokens_file.display()
    );
    Ok(())
}

fn list(config: &Path, as_json: bool) -> Result<(), Failure> {
    let admin = admin_config(config)?;
    let named = file::read(&admin.tokens_file)
        .map_err(|e| Failure::new(2, e.to_string()))?
        .unwrap_or_default();
    let mut rows = vec![json!({
        "name": token::ADMIN_TOKEN_NAME,
        "role": Role::Admin.as_str(),
        "created": null,
        "source": if admin.token_file.exists() {
            admin.token_file.display().to_string()
        } else {
            format!("{} (made by the first `cutover serve`)", admin.token_file.display())
        },
    })];
    rows.extend(named.iter().map(|e| {
        json!({
            "name": e.name,
            "role": e.role.as_str(),
            "created": e.created,
            "source": admin.tokens_file.display().to_string(),
        })
    }));
    if as_json {
        return output::line(&serde_json::to_string_pretty(&json!({ "tokens": rows })).unwrap_or_default());
    }
    let width = rows
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:width$}  {:8}  {:20}  SOURCE", "NAME", "ROLE", "CREATED");
    for r in &rows {
        out.push_str(&format!(
            "\n{:width$}  {:8}  {:20}  {}",
            r["name"].as_str().unwrap_or(""),
            r["role"].as_str().unwrap_or(""),
            r["created"].as_str().unwrap_or("-"),
            r["source"].as_str().unwrap_or("")
        ));
    }
    output::line(&out)
}
