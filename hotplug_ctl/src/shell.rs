//! `vanish run --shell`: the booted guest's shell on this terminal, card verbs from another.

use anyhow::Result;

use crate::session::Session;

/// Prints how to reach the card, then relays the guest's `sh -i` until it exits (or stdin
/// ends). The caller cleans up as after any run.
pub async fn interact(session: &mut Session) -> Result<()> {
    let qmp = session.qmp_socket();
    match session.card_control() {
        Some(control) => eprintln!(
            "vanish: card control from another terminal: vanish ctl --control {} --qmp {} status|screenshot FILE|dead|alive|unplug MODE",
            control.display(),
            qmp.display()
        ),
        None => eprintln!("vanish: no card server is running"),
    }
    eprintln!("vanish: guest shell (exit or ^D to end the run)");
    match session.guest().shell().await? {
        Some(code) => eprintln!("\r\nvanish: guest shell exited ({code})"),
        None => eprintln!("\r\nvanish: stdin ended; the guest shell was hung up"),
    }
    Ok(())
}
