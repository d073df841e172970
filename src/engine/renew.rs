//! Renewals and expiry (issue 14): the work of a ready order's server when no action is
//! pending on it.

use super::EngineError;
use super::step::{Step, Then};
use crate::clock::Timestamp;

impl Step<'_> {
    /// A ready order fell due with no action pending on its server: renewals, expiry sweeps
    /// and reminders go here. Until they exist there is nothing to do: the order goes idle.
    pub(super) async fn renewals(&mut self) -> Result<Then, EngineError> {
        self.idle().await
    }

    /// When a ready order's server next needs the engine with no action pending (a renewal, a
    /// reminder, an expiry sweep); `None`: not until something is asked for.
    pub(super) fn next_server_wake(&self) -> Option<Timestamp> {
        None
    }
}
