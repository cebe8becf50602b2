//! `herd token create --worker NAME`.

use crate::client::Client;
use crate::ClientArgs;
use clap::Subcommand;
use miette::{miette, Result};
use serde_json::json;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Create {
        /// Create a worker token for the worker of this name.
        #[arg(long)]
        worker: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create { worker, client } => {
            let c = Client::new(&client)?;
            let res = c
                .post(
                    "/api/v1/tokens",
                    &json!({ "kind": "worker", "worker": worker }),
                )
                .await?;
            let token = res["token"]
                .as_str()
                .ok_or_else(|| miette!("the server answered without a token"))?;
            println!("{token}");
            eprintln!(
                "start the worker with:\n  herd worker --server {} --token {token} --name {worker}",
                client.server
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
