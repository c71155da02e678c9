//! `poshsm admin …` (placeholder, being written).
use clap::Args;

#[derive(Args, Debug)]
pub struct AdminArgs {}

pub async fn run(_args: AdminArgs) -> Result<(), String> {
    Err("admin is not implemented yet".into())
}
