//! `ferry token new|hash`: tokens for the server's config file, which
//! stores only their SHA-256.

use std::io::{Read, Write};

use anyhow::{Context, bail};

use crate::cli::TokenCommand;

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    match command {
        TokenCommand::New { name } => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
            let token = hex::encode(secret);
            let digest = hex::encode(ferry_server::auth::token_digest(&token));
            writeln!(
                stdout,
                "token: {token}\n\n# for the server's config file:\n[[tokens]]\nname = {name:?}\nsha256 = \"{digest}\"\n\
                 scopes = [{{ prefix = \"/\", allow = [\"read\", \"write\", \"delete\", \"list\"] }}]"
            )?;
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token).context("cannot read the token from stdin")?;
            let token = token.trim();
            if token.is_empty() {
                bail!("no token on stdin");
            }
            writeln!(stdout, "{}", hex::encode(ferry_server::auth::token_digest(token)))?;
        }
    }
    Ok(())
}
