//! `stagehand bench` (hidden): generated NixOS-shaped inputs, timed.
pub fn run(_args: &[String]) -> Result<(), String> {
    Err("not yet".into())
}
