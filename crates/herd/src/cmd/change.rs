//! `herd change approve ID`: lets a pull request's change that waits for
//! approval (a fork, an author the project does not trust) be built.

use crate::client::Client;
use crate::cmd::build::print_json;
use crate::{outln, ClientArgs, Output};
use clap::Subcommand;
use herd_api::projects::Approval;
use miette::Result;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ChangeCommand {
    /// Build a pull request's change that waits for approval (`herd
    /// project show PROJECT` lists the changes and why each waits). It is
    /// built without secrets, on the workers labelled for untrusted code.
    Approve {
        /// The change's id.
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: ChangeCommand) -> Result<ExitCode> {
    match cmd {
        ChangeCommand::Approve { id, client } => {
            let c = Client::new(&client)?;
            let a: Approval = c.act(&format!("/api/v1/changes/{id}/approve")).await?;
            if client.output == Output::Json {
                print_json(&a)?;
                return Ok(ExitCode::SUCCESS);
            }
            match (a.build_id, &a.skipped) {
                (Some(b), _) => outln!("approved change {id}: build {b}"),
                (None, Some(why)) => outln!("approved change {id}: not built: {why}"),
                (None, None) => outln!("approved change {id}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
