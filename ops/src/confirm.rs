//! Confirmation of destructive verbs (`tt rollback`, `tt env delete`, `tt host reset`, ...):
//! `--yes` skips it; otherwise `tt` asks "...? [y/N]" on a terminal, and without one it refuses
//! (exit 2) rather than guess what a script meant.

use std::io::{BufRead, Write};

/// Why a destructive verb did not run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    /// stdin is not a terminal and `--yes` was not given.
    #[error("{question}: refusing without confirmation; stdin is not a terminal, pass --yes")]
    NoTerminal { question: String },
    /// The operator answered anything but yes (or stdin ended).
    #[error("not confirmed; nothing was changed")]
    Declined,
}

impl ConfirmError {
    /// `tt`'s exit code: 2 (usage) without a terminal, 1 when declined.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfirmError::NoTerminal { .. } => crate::client::EXIT_USAGE,
            ConfirmError::Declined => 1,
        }
    }
}

/// Asks `question` unless `yes`: on a terminal (`stdin_is_tty`) writes "QUESTION? [y/N] " to
/// `prompt` and reads one line of `input`; "y" or "yes" (any case) confirms.
pub fn confirm(
    question: &str,
    yes: bool,
    stdin_is_tty: bool,
    input: &mut impl BufRead,
    prompt: &mut impl Write,
) -> Result<(), ConfirmError> {
    if yes {
        return Ok(());
    }
    if !stdin_is_tty {
        return Err(ConfirmError::NoTerminal { question: question.to_string() });
    }
    let _ = write!(prompt, "{question}? [y/N] ");
    let _ = prompt.flush();
    let mut answer = String::new();
    match input.read_line(&mut answer) {
        Ok(n) if n > 0 && matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") => {
            Ok(())
        }
        _ => Err(ConfirmError::Declined),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(yes: bool, tty: bool, typed: &str) -> (Result<(), ConfirmError>, String) {
        let mut prompt = Vec::new();
        let r = confirm("roll back svc/prod", yes, tty, &mut typed.as_bytes(), &mut prompt);
        (r, String::from_utf8(prompt).unwrap())
    }

    #[test]
    fn yes_skips_the_question() {
        assert_eq!(ask(true, false, ""), (Ok(()), String::new()));
    }

    #[test]
    fn a_terminal_is_asked_and_only_yes_confirms() {
        assert_eq!(ask(false, true, "y\n"), (Ok(()), "roll back svc/prod? [y/N] ".into()));
        assert_eq!(ask(false, true, "YES\n").0, Ok(()));
        assert_eq!(ask(false, true, "\n").0, Err(ConfirmError::Declined), "the default is no");
        assert_eq!(ask(false, true, "yep\n").0, Err(ConfirmError::Declined));
        assert_eq!(ask(false, true, "").0, Err(ConfirmError::Declined), "end of input");
    }

    #[test]
    fn without_a_terminal_it_refuses_with_exit_2() {
        let (r, prompt) = ask(false, false, "y\n");
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("pass --yes"), "{e}");
        assert!(prompt.is_empty(), "nothing is asked when nobody can answer");
    }
}
