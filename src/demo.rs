//! placeholder
/// x
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct DemoError;
/// x
pub fn run() -> Result<i32, DemoError> { Ok(0) }
