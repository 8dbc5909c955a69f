//! `moor`: argv → `cli::run()`; the exit status comes from the result.

fn main() -> std::process::ExitCode {
    match moor::cli::run() {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("moor: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
