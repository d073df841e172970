//! Why an operator or a storefront did something: the sentence that goes in the timeline with an
//! admin action, a renewal, a cancellation of service or a token rotation. Parsed once, so every
//! surface accepts the same reasons.

use std::fmt;

/// The longest reason accepted; a reason is a sentence for the timeline, not a document.
pub const MAX_REASON_CHARS: usize = 1000;

/// A reason as the timeline shows it: trimmed, not empty, at most [`MAX_REASON_CHARS`]
/// characters, no control characters but line breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason(String);

/// Why a reason was refused. Its text is written to follow the field's name (`reason: ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    /// Nothing but white space.
    #[error("a reason is required")]
    Empty,
    /// Longer than [`MAX_REASON_CHARS`].
    #[error("must be at most {MAX_REASON_CHARS} characters")]
    TooLong,
    /// A control character other than a line break.
    #[error("must not contain control characters")]
    ControlCharacters,
}

impl Reason {
    /// `raw`, trimmed, when it is a reason.
    ///
    /// # Errors
    /// See [`ReasonError`].
    pub fn parse(raw: &str) -> Result<Self, ReasonError> {
        let reason = raw.trim();
        if reason.is_empty() {
            return Err(ReasonError::Empty);
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(ReasonError::TooLong);
        }
        if reason.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ReasonError::ControlCharacters);
        }
        Ok(Self(reason.to_string()))
    }

    /// The reason's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_trimmed_sentences() {
        assert_eq!(
            Reason::parse("  customer asked \n").unwrap().as_str(),
            "customer asked"
        );
        assert_eq!(
            Reason::parse("line one\nline two").unwrap().as_str(),
            "line one\nline two"
        );
        assert_eq!(Reason::parse(" \n\t "), Err(ReasonError::Empty));
        assert_eq!(Reason::parse("a\tb"), Err(ReasonError::ControlCharacters));
        let longest = "é".repeat(MAX_REASON_CHARS);
        assert!(Reason::parse(&longest).is_ok());
        assert_eq!(
            Reason::parse(&format!("{longest}x")),
            Err(ReasonError::TooLong)
        );
    }
}
