//! `moor`: argv (as the OS gave it, any bytes) → `cli::run()`; the exit status comes from
//! the result.

fn main() -> std::process::ExitCode {
    match moor::cli::run(std::env::args_os().collect()) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("moor: {}", chain(&e));
            std::process::ExitCode::from(1)
        }
    }
}

/// The error and its causes, each said once: most messages already embed their source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}
