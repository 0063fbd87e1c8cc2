//! `vanish run --shell`: the booted guest's shell on this terminal, card verbs from another.

use anyhow::Result;

use crate::runner::Session;

/// Prints how to reach the card, then relays the guest's `sh -i` until it exits (or stdin
/// ends). The caller cleans up as after any run.
pub async fn interact(session: &mut Session) -> Result<()> {
    let qmp = session.dir.path().join("qmp.sock");
    match &session.server {
        Some(server) => eprintln!(
            "vanish: card control from another terminal: vanish ctl --control {} --qmp {} status|screenshot FILE|dead|alive|unplug MODE",
            server.control.display(),
            qmp.display()
        ),
        None => eprintln!("vanish: no card server is running"),
    }
    eprintln!("vanish: guest shell (exit or ^D to end the run)");
    match session.guest.shell().await? {
        Some(code) => eprintln!("\r\nvanish: guest shell exited ({code})"),
        None => eprintln!("\r\nvanish: stdin ended; the guest shell was hung up"),
    }
    Ok(())
}
