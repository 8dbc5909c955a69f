//! `moor`: argv (as the OS gave it, any bytes) → `cli::run()`; the exit status comes from
//! the result.

fn main() -> std::process::ExitCode {
    match moor::cli::run(std::env::args_os().collect()) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("moor: {}", moor::error::Chain(&e));
            std::process::ExitCode::from(1)
        }
    }
}
